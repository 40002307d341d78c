// Compile-only stub of the Android API (signatures as in the Android SDK) for tests/test_package.py.
package android;
public final class R { public static final class layout { public static final int simple_spinner_dropdown_item = 17367049; } }
