// Compile-only stub of the Android API (signatures as in the Android SDK) for tests/test_package.py.
package android.view;
public class View {
    public static final int VISIBLE = 0;
    public static final int GONE = 8;
    public static final int FOCUS_DOWN = 130;
    public interface OnClickListener { void onClick(View v); }
    public View(android.content.Context context) {}
    public int getVisibility() { return VISIBLE; }
    public void setVisibility(int visibility) {}
    public void setPadding(int left, int top, int right, int bottom) {}
    public boolean post(Runnable action) { return true; }
    public void setOnClickListener(OnClickListener listener) {}
}
