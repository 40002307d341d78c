// Compile-only stub of the Android API (signatures as in the Android SDK) for tests/test_package.py.
package android.widget;
public class Button extends TextView { public Button(android.content.Context context) { super(context); } }
