"""Compiler side: target presets, the Relax pass pipeline and library builds (imports TVM's compiler)."""
