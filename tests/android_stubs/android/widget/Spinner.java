// Compile-only stub of the Android API (signatures as in the Android SDK) for tests/test_package.py.
package android.widget;
public class Spinner extends AdapterView<SpinnerAdapter> {
    public Spinner(android.content.Context context) { super(context); }
    @Override public SpinnerAdapter getAdapter() { return null; }
    @Override public void setAdapter(SpinnerAdapter adapter) {}
}
