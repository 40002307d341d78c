// Compile-only stub of the Android API (signatures as in the Android SDK) for tests/test_package.py.
package android.app;
public class Activity extends android.content.Context {
    protected void onCreate(android.os.Bundle savedInstanceState) {}
    protected void onDestroy() {}
    public void setContentView(android.view.View view) {}
    public final void runOnUiThread(Runnable action) {}
}
