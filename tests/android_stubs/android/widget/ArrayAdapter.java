// Compile-only stub of the Android API (signatures as in the Android SDK) for tests/test_package.py.
package android.widget;
public class ArrayAdapter<T> implements SpinnerAdapter {
    public ArrayAdapter(android.content.Context context, int resource, java.util.List<T> objects) {}
}
