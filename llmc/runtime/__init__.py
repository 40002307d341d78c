"""Load and run a compiled artifact. Imports only ``tvm.runtime``: it runs where TVM's compiler is absent."""
