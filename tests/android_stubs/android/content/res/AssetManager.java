// Compile-only stub of the Android API (signatures as in the Android SDK) for tests/test_package.py.
package android.content.res;
public class AssetManager {
    public String[] list(String path) throws java.io.IOException { throw new RuntimeException("stub"); }
    public java.io.InputStream open(String name) throws java.io.IOException { throw new RuntimeException("stub"); }
}
