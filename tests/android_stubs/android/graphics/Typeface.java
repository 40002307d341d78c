// Compile-only stub of the Android API (signatures as in the Android SDK) for tests/test_package.py.
package android.graphics;
public class Typeface { public static final int BOLD = 1; }
