// Swift side of llmc's chat engine: a conversation with one packaged model, text in, streamed text out.
import Foundation
import LLMCRuntime

public enum LLMCChatError: Error, LocalizedError {
    case missingBundle(String)

    public var errorDescription: String? {
        switch self {
        case let .missingBundle(message): return message
        }
    }
}

/// Sampling of one answer: temperature 0 is greedy.
public struct LLMCSampling: Sendable {
    public var temperature: Float = 0.7
    public var topP: Float = 0.95
    public var seed: UInt64 = UInt64.random(in: 0 ... UInt64.max)
    public var maxTokens: Int = 512

    public init() {}
}

/// What one answer took.
public struct LLMCReply: Sendable {
    public let text: String
    public let promptTokens: Int
    public let outputTokens: Int
    public let prefillSeconds: Double
    public let decodeSeconds: Double
    public let finishReason: String

    /// Decode speed: every output token but the first came from a decode step.
    public var decodeTokensPerSecond: Double {
        decodeSeconds > 0 ? Double(max(outputTokens - 1, 0)) / decodeSeconds : 0
    }
}

/// One conversation: the chat template was rendered by `llmc package` into the app config, and the KV cache keeps
/// the conversation so each turn prefills only its new tokens. `send` blocks: call it off the main thread.
public final class LLMCChat {
    public let model: LLMCModel
    private let native: LLMCNativeChat

    /// Loads `model` from the app's "bundle" folder, or from `directory` (e.g. where downloaded weights live).
    public init(model: LLMCModel, directory: URL? = nil) throws {
        guard let bundle = Bundle.main.url(forResource: "bundle", withExtension: nil) else {
            throw LLMCChatError.missingBundle("add the package's bundle folder to the app as a folder reference")
        }
        let folder = directory ?? bundle.appendingPathComponent(model.modelPath)
        native = try LLMCNativeChat(
            appConfig: bundle.appendingPathComponent(LLMCModels.appConfig).path,
            modelId: model.modelId,
            modelDir: folder.path
        )
        self.model = model
    }

    /// Answers `text`; `onText` gets each piece of the answer as it is generated (on the calling thread).
    public func send(_ text: String, sampling: LLMCSampling = LLMCSampling(),
                     onText: @escaping (String) -> Void) throws -> LLMCReply
    {
        var answer = ""
        let stats = try native.sendMessage(
            text,
            temperature: sampling.temperature,
            topP: sampling.topP,
            seed: sampling.seed,
            maxTokens: sampling.maxTokens
        ) { piece in
            answer += piece
            onText(piece)
        }
        return LLMCReply(
            text: answer, promptTokens: stats.promptTokens, outputTokens: stats.outputTokens,
            prefillSeconds: stats.prefillSeconds, decodeSeconds: stats.decodeSeconds, finishReason: stats.finishReason
        )
    }

    /// Stops a running `send` after its current token (any thread).
    public func stop() {
        native.stop()
    }

    /// Starts a new conversation, with `systemPrompt` when the model's template has a system role.
    public func reset(systemPrompt: String = "") {
        native.reset(withSystemPrompt: systemPrompt)
    }
}
