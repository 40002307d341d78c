// Swift side of llmc's engine: one loaded model, token ids in, greedy token ids out. The model's
// tokenizer.json is in its bundle folder for the app's tokenizer of choice (see the package README).
import Foundation
import LLMCRuntime

public enum LLMCEngineError: Error {
    case missingBundle(String)
}

public final class LLMCEngine {
    public let model: LLMCModel
    private let native: LLMCNativeEngine

    /// Loads `model` from the app's "bundle" folder (or `directory`, e.g. where downloaded weights live).
    public init(model: LLMCModel, directory: URL? = nil) throws {
        guard let folder = directory ?? Bundle.main.url(forResource: "bundle", withExtension: nil)?
            .appendingPathComponent(model.modelPath)
        else {
            throw LLMCEngineError.missingBundle("add the package's bundle folder to the app as a folder reference")
        }
        let configData = try Data(contentsOf: folder.appendingPathComponent("llmc-config.json"))
        let config = try JSONSerialization.jsonObject(with: configData) as? [String: Any]
        let params = config?["params"] as? [String] ?? []
        native = try LLMCNativeEngine(
            modelLib: model.modelLib,
            modelDir: folder.path,
            paramNames: params,
            contextWindow: model.contextWindow,
            prefillChunk: model.prefillChunk
        )
        self.model = model
    }

    /// Up to `maxTokens` greedy tokens after `prompt`, stopping at any of `stopTokens`.
    public func generate(prompt: [Int32], maxTokens: Int, stopTokens: Set<Int32> = []) throws -> [Int32] {
        var output: [Int32] = []
        var token = try native.prefill(prompt.map { NSNumber(value: $0) }).int32Value
        while output.count < maxTokens, !stopTokens.contains(token) {
            output.append(token)
            if prompt.count + output.count >= model.contextWindow { break }
            token = try native.decode(Int(token)).int32Value
        }
        return output
    }

    public func reset() {
        native.reset()
    }
}
