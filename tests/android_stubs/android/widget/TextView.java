// Compile-only stub of the Android API (signatures as in the Android SDK) for tests/test_package.py.
package android.widget;
public class TextView extends android.view.View {
    public TextView(android.content.Context context) { super(context); }
    public CharSequence getText() { return ""; }
    public void setText(CharSequence text) {}
    public final void append(CharSequence text) {}
    public CharSequence getHint() { return ""; }
    public final void setHint(CharSequence hint) {}
    public android.graphics.Typeface getTypeface() { return null; }
    public void setTypeface(android.graphics.Typeface tf, int style) {}
    public void setTextIsSelectable(boolean selectable) {}
}
