// Compile-only stub of the Android API (signatures as in the Android SDK) for tests/test_package.py.
package android.content;
public class Context {
    public java.io.File getFilesDir() { throw new RuntimeException("stub"); }
    public android.content.res.AssetManager getAssets() { throw new RuntimeException("stub"); }
}
