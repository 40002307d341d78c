// Compile-only stub of the Android API (signatures as in the Android SDK) for tests/test_package.py.
package android.os;
public final class Bundle {}
