// Compile-only stub of the Android API (signatures as in the Android SDK) for tests/test_package.py.
package android.view;
public abstract class ViewGroup extends View {
    public static class LayoutParams {
        public static final int MATCH_PARENT = -1;
        public static final int WRAP_CONTENT = -2;
        public LayoutParams(int width, int height) {}
    }
    public ViewGroup(android.content.Context context) { super(context); }
    public void addView(View child) {}
    public void addView(View child, LayoutParams params) {}
    public void removeAllViews() {}
}
