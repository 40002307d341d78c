// Compile-only stub of the Android API (signatures as in the Android SDK) for tests/test_package.py.
package android.widget;
public class EditText extends TextView {
    public EditText(android.content.Context context) { super(context); }
    @Override public android.text.Editable getText() { return null; }
}
