// llmc in the browser: load an artifact compiled with `llmc compile MODEL --target webgpu` (llmc-config.json,
// the .wasm model library, the tensor cache, tokenizer.json) through TVM's JS runtime (global `tvmjs`,
// from tvmjs.bundle.js) and generate tokens greedily on WebGPU.
"use strict";

const PAGE_SIZE = 16; // KV-cache page size, as in llmc.runtime.engine

class LlmcModel {
  /** Load the artifact at `base` (a folder URL ending in "/"); `log` receives progress lines. */
  static async load(base, log = console.log) {
    const self = new LlmcModel();
    self.base = base;
    self.config = await (await fetch(new URL("llmc-config.json", base))).json();
    if (self.config.target !== "webgpu") {
      throw new Error(`this artifact was compiled for ${self.config.target}; compile it with --target webgpu`);
    }
    const wasm = await (await fetch(new URL(self.config.library, base))).arrayBuffer();
    const tvm = await tvmjs.instantiate(new Uint8Array(wasm), tvmjs.createPolyfillWASI(), log);
    const gpu = await tvmjs.detectGPUDevice();
    if (gpu === undefined) throw new Error("this browser has no WebGPU adapter");
    if (self.config.dtype === "float16" && !gpu.device.features.has("shader-f16")) {
      throw new Error(
        `this WebGPU adapter has no shader-f16, and ${self.config.quantization} kernels need it; ` +
          "compile with an fp32 scheme (q4f32_1, q0f32) for this browser"
      );
    }
    log(`WebGPU adapter: ${gpu.adapterInfo.vendor || ""} ${gpu.adapterInfo.architecture || ""}`.trim());
    tvm.initWebGPU(gpu.device);
    self.tvm = tvm;
    self.device = tvm.webgpu();
    tvm.beginScope();
    self.vm = tvm.detachFromCurrentScope(tvm.createVirtualMachine(self.device));
    let started = performance.now();
    const seconds = () => ((performance.now() - started) / 1000).toFixed(1);
    await tvm.fetchTensorCache(base, self.device, "llmc", "cache");
    log(`weights loaded in ${seconds()} s`);
    self.params = tvm.detachFromCurrentScope(tvm.getParamsFromCacheByName(self.config.params));
    const shape = (n) => tvm.makeShapeTuple([n]);
    self.kv = tvm.detachFromCurrentScope(
      self.vm.getFunction("create_paged_kv_cache")(
        shape(1), shape(self.config.context_window), shape(self.config.prefill_chunk), shape(PAGE_SIZE), shape(0)
      )
    );
    for (const name of ["embed", "prefill", "decode"]) {
      self[name] = tvm.detachFromCurrentScope(self.vm.getFunction(name));
    }
    const builtin = (name) => tvm.detachFromCurrentScope(tvm.getGlobalFunc(name));
    self.kvAdd = builtin("vm.builtin.kv_state_add_sequence");
    self.kvBegin = builtin("vm.builtin.kv_state_begin_forward");
    self.kvEnd = builtin("vm.builtin.kv_state_end_forward");
    self.kvClear = builtin("vm.builtin.kv_state_clear");
    self.reshape = builtin("vm.builtin.reshape");
    tvm.endScope();
    started = performance.now();
    await tvm.asyncLoadWebGPUPipelines(self.vm.getInternalModule());
    log(`kernels compiled in ${seconds()} s`);
    log(`loaded ${self.config.model.model_type} (${self.config.quantization}) on WebGPU`);
    return self;
  }

  /** Run `fn(ids)` (embed + prefill/decode) on `tokens` of sequence 0; return the logits as a Float32Array. */
  async forward(fn, tokens) {
    const tvm = this.tvm;
    tvm.beginScope();
    const ids = tvm.empty([tokens.length], "int32", this.device).copyFrom(Int32Array.from(tokens));
    const embeds = this.reshape(
      this.embed(ids, this.params),
      tvm.makeShapeTuple([1, tokens.length, this.config.model.hidden_size])
    );
    this.kvBegin(this.kv, tvm.makeShapeTuple([0]), tvm.makeShapeTuple([tokens.length]));
    const logits = fn(embeds, this.kv, this.params).get(0);
    this.kvEnd(this.kv);
    const host = tvm.empty(logits.shape, "float32", tvm.cpu()).copyFrom(logits);
    await this.device.sync();
    const values = Float32Array.from(host.toArray());
    tvm.endScope();
    return values;
  }

  /** Greedy generation: `maxTokens` new token ids after the prompt ids (stops at EOS when `stopAtEos`). */
  async generate(promptIds, maxTokens, stopAtEos = true, onToken = () => {}) {
    if (promptIds.length === 0) throw new Error("empty prompt");
    if (promptIds.length + maxTokens > this.config.context_window) {
      throw new Error(`prompt + new tokens exceed the context window (${this.config.context_window})`);
    }
    this.kvClear(this.kv);
    this.kvAdd(this.kv, new tvmjs.Scalar(0, "int64"));
    let logits;
    for (let start = 0; start < promptIds.length; start += this.config.prefill_chunk) {
      logits = await this.forward(this.prefill, promptIds.slice(start, start + this.config.prefill_chunk));
    }
    const eos = new Set((this.config.tokenizer || {}).eos_token_ids || []);
    const out = [];
    for (;;) {
      const next = argmax(logits);
      out.push(next);
      onToken(next);
      if (out.length >= maxTokens || (stopAtEos && eos.has(next))) return out;
      logits = await this.forward(this.decode, [next]);
    }
  }
}

function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}
