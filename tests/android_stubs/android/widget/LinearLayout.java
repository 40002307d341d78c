// Compile-only stub of the Android API (signatures as in the Android SDK) for tests/test_package.py.
package android.widget;
public class LinearLayout extends android.view.ViewGroup {
    public static final int HORIZONTAL = 0;
    public static final int VERTICAL = 1;
    public static class LayoutParams extends android.view.ViewGroup.LayoutParams {
        public LayoutParams(int width, int height) { super(width, height); }
        public LayoutParams(int width, int height, float weight) { super(width, height); }
    }
    public LinearLayout(android.content.Context context) { super(context); }
    public int getOrientation() { return 0; }
    public void setOrientation(int orientation) {}
}
