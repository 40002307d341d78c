// Compile-only stub of the Android API (signatures as in the Android SDK) for tests/test_package.py.
package android.widget;
public class ScrollView extends android.view.ViewGroup {
    public ScrollView(android.content.Context context) { super(context); }
    public boolean fullScroll(int direction) { return true; }
}
