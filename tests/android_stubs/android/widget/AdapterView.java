// Compile-only stub of the Android API (signatures as in the Android SDK) for tests/test_package.py.
package android.widget;
public abstract class AdapterView<T> extends android.view.ViewGroup {
    public interface OnItemSelectedListener {
        void onItemSelected(AdapterView<?> parent, android.view.View view, int position, long id);
        void onNothingSelected(AdapterView<?> parent);
    }
    public AdapterView(android.content.Context context) { super(context); }
    public final OnItemSelectedListener getOnItemSelectedListener() { return null; }
    public void setOnItemSelectedListener(OnItemSelectedListener listener) {}
    public abstract T getAdapter();
    public abstract void setAdapter(T adapter);
}
