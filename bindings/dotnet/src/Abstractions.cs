// The request, response and policy types of the seed's public .NET surface
// (SmallMind.Abstractions). They map one to one onto the C API's JSON.
using System;
using System.Collections.Generic;

namespace SmallMind.Abstractions
{
    public enum ChatRole { System, User, Assistant, Tool }

    /// <summary>A tool call the model made: its id, the function's name and its arguments (JSON).</summary>
    public sealed class ToolCall
    {
        public string Id { get; set; }
        public string Name { get; set; }
        public string ArgumentsJson { get; set; }
    }

    public sealed class ChatMessageV3
    {
        public ChatRole Role { get; set; }
        public string Content { get; set; }
        public IReadOnlyList<ToolCall> ToolCalls { get; set; }
        public string ToolCallId { get; set; }
    }

    /// <summary>Sampling options; a property left null takes the chat's (or the library's) default.</summary>
    public sealed class GenerationOptions
    {
        public int? MaxNewTokens { get; set; }
        public float? Temperature { get; set; }
        public int? TopK { get; set; }
        public float? TopP { get; set; }
        public long? Seed { get; set; }
        public IReadOnlyList<string> Stop { get; set; }
    }

    /// <summary>A function the model may call; ParametersJsonSchema is a JSON Schema object.</summary>
    public sealed class ToolDefinition
    {
        public string Name { get; set; }
        public string Description { get; set; }
        public string ParametersJsonSchema { get; set; }
    }

    /// <summary>"none", "auto", "required", or one named function.</summary>
    public sealed class ToolChoice
    {
        internal readonly string Mode;
        internal readonly string FunctionName;
        private ToolChoice(string mode, string functionName) { Mode = mode; FunctionName = functionName; }
        public static readonly ToolChoice None = new ToolChoice("none", null);
        public static readonly ToolChoice Auto = new ToolChoice("auto", null);
        public static readonly ToolChoice Required = new ToolChoice("required", null);
        public static ToolChoice Function(string name) { return new ToolChoice(null, name); }
    }

    /// <summary>Plain text, any JSON object, or JSON matching a schema.</summary>
    public sealed class ResponseFormat
    {
        internal readonly string Type;
        internal readonly string SchemaJson;
        internal readonly string Name;
        internal readonly bool Strict;
        private ResponseFormat(string type, string schemaJson, string name, bool strict)
        {
            Type = type; SchemaJson = schemaJson; Name = name; Strict = strict;
        }
        public static readonly ResponseFormat Text = new ResponseFormat("text", null, null, false);
        public static readonly ResponseFormat JsonObject = new ResponseFormat("json_object", null, null, false);
        public static ResponseFormat JsonSchema(string schemaJson, string name = "response", bool strict = true)
        {
            return new ResponseFormat("json_schema", schemaJson, name, strict);
        }
    }

    /// <summary>A retrieved passage the answer may cite.</summary>
    public sealed class RetrievedChunk
    {
        public string Id { get; set; }
        public string Content { get; set; }
        public string Source { get; set; }
        public string Title { get; set; }
        public double? Score { get; set; }
    }

    public sealed class Citation
    {
        public string Id { get; set; }
        public string Source { get; set; }
        public string Title { get; set; }
        public string Snippet { get; set; }
        public double? Score { get; set; }
    }

    /// <summary>The result of a tool call the runtime ran during the request.</summary>
    public sealed class ToolResult
    {
        public string ToolCallId { get; set; }
        public string Name { get; set; }
        public string Content { get; set; }
        /// <summary>The element of the response's "tool_results" as JSON.</summary>
        public string RawJson { get; set; }
    }

    public sealed class ChatRequest
    {
        public IReadOnlyList<ChatMessageV3> Messages { get; set; }
        public GenerationOptions Options { get; set; }
        /// <summary>Overrides the chat's DefaultContextPolicy for this request.</summary>
        public IContextPolicy ContextPolicy { get; set; }
        public IReadOnlyList<ToolDefinition> Tools { get; set; }
        public ToolChoice ToolChoice { get; set; }
        public ResponseFormat ResponseFormat { get; set; }
        public IReadOnlyList<RetrievedChunk> RetrievedContext { get; set; }
        /// <summary>Further request fields, written into the request JSON as they are (a string
        /// value that holds JSON is passed as a string: use the typed properties for objects).</summary>
        public IDictionary<string, object> AdditionalFields { get; set; }
    }

    public sealed class UsageStats
    {
        public int PromptTokens { get; set; }
        public int CompletionTokens { get; set; }
        public int TotalTokens { get; set; }
        /// <summary>Prompt tokens whose KV cache entries were reused.</summary>
        public int CachedTokens { get; set; }
        public double TimeToFirstTokenMs { get; set; }
        /// <summary>Decode rate (generated tokens per second).</summary>
        public double TokensPerSecond { get; set; }
        public double PrefillMs { get; set; }
        public double DecodeMs { get; set; }
        public double PrefillTokensPerSecond { get; set; }
    }

    public sealed class ChatResponse
    {
        public ChatMessageV3 Message { get; set; }
        /// <summary>"stop", "length", "tool_calls" (or "cancelled" from an on-token callback that stopped).</summary>
        public string FinishReason { get; set; }
        public UsageStats Usage { get; set; }
        public IReadOnlyList<Citation> Citations { get; set; }
        public IReadOnlyList<ToolResult> ToolResults { get; set; }
        public IReadOnlyList<string> Warnings { get; set; }
        /// <summary>The library's response JSON, whole (fields newer than these bindings included).</summary>
        public string RawJson { get; set; }
    }

    /// <summary>Which part of the conversation is given to the model. Applied by the library,
    /// deterministically: system messages stay, whole turns are dropped oldest first.</summary>
    public interface IContextPolicy
    {
        string Name { get; }
    }

    public sealed class KeepAllPolicy : IContextPolicy
    {
        public string Name { get { return "keep_all"; } }
    }

    public sealed class KeepLastNTurnsPolicy : IContextPolicy
    {
        public int MaxTurns { get; private set; }
        public KeepLastNTurnsPolicy(int maxTurns)
        {
            if (maxTurns <= 0) throw new ArgumentOutOfRangeException("maxTurns", "must be at least 1");
            MaxTurns = maxTurns;
        }
        public string Name { get { return "keep_last_n_turns"; } }
    }

    public sealed class SlidingWindowPolicy : IContextPolicy
    {
        /// <summary>Prompt tokens kept; 0 means the engine's context length.</summary>
        public int MaxTokens { get; private set; }
        public SlidingWindowPolicy(int maxTokens = 0)
        {
            if (maxTokens < 0) throw new ArgumentOutOfRangeException("maxTokens", "must not be negative");
            MaxTokens = maxTokens;
        }
        public string Name { get { return "sliding_window"; } }
    }

    /// <summary>Events of each request, called on the thread that sent it. OnToolCall fires once the
    /// library runs tools itself (ABI 2, "Tools and retrieval"); OnKvCacheBudgetExceeded and
    /// OnKvCacheEviction once engine-wide KV budgets land ("Sessions that last").</summary>
    public interface IChatTelemetry
    {
        void OnRequestStart(string sessionId, int messageCount);
        void OnFirstToken(string sessionId, double elapsedMs);
        void OnContextPolicyApplied(string sessionId, string policyName, int originalTokens, int finalTokens);
        void OnKvCacheAccess(string sessionId, bool hit, int cachedTokens);
        void OnRequestComplete(string sessionId, UsageStats usage);
        void OnToolCall(string sessionId, string toolName, double elapsedMs);
        void OnKvCacheBudgetExceeded(string sessionId, long currentBytes, long maxBytes);
        void OnKvCacheEviction(string evictedSessionId, string reason, long freedBytes);
    }

    public class NoOpTelemetry : IChatTelemetry
    {
        public static readonly NoOpTelemetry Instance = new NoOpTelemetry();
        public virtual void OnRequestStart(string sessionId, int messageCount) { }
        public virtual void OnFirstToken(string sessionId, double elapsedMs) { }
        public virtual void OnContextPolicyApplied(string sessionId, string policyName, int originalTokens, int finalTokens) { }
        public virtual void OnKvCacheAccess(string sessionId, bool hit, int cachedTokens) { }
        public virtual void OnRequestComplete(string sessionId, UsageStats usage) { }
        public virtual void OnToolCall(string sessionId, string toolName, double elapsedMs) { }
        public virtual void OnKvCacheBudgetExceeded(string sessionId, long currentBytes, long maxBytes) { }
        public virtual void OnKvCacheEviction(string evictedSessionId, string reason, long freedBytes) { }
    }

    /// <summary>Writes each event as a line (to Console.Out, or the writer given).</summary>
    public class ConsoleTelemetry : IChatTelemetry
    {
        private readonly System.IO.TextWriter output;
        public ConsoleTelemetry() : this(null) { }
        public ConsoleTelemetry(System.IO.TextWriter output) { this.output = output; }
        private System.IO.TextWriter Out { get { return output ?? Console.Out; } }

        public virtual void OnRequestStart(string sessionId, int messageCount)
        { Out.WriteLine("[{0}] Request started with {1} messages", sessionId, messageCount); }
        public virtual void OnFirstToken(string sessionId, double elapsedMs)
        { Out.WriteLine("[{0}] First token: {1:F2}ms (TTFT)", sessionId, elapsedMs); }
        public virtual void OnContextPolicyApplied(string sessionId, string policyName, int originalTokens, int finalTokens)
        { Out.WriteLine("[{0}] Context policy '{1}': {2} → {3} tokens", sessionId, policyName, originalTokens, finalTokens); }
        public virtual void OnKvCacheAccess(string sessionId, bool hit, int cachedTokens)
        { Out.WriteLine("[{0}] KV cache {1}: {2} cached tokens", sessionId, hit ? "HIT" : "MISS", cachedTokens); }
        public virtual void OnRequestComplete(string sessionId, UsageStats usage)
        {
            Out.WriteLine("[{0}] Completed: {1} prompt + {2} completion = {3} total", sessionId,
                usage.PromptTokens, usage.CompletionTokens, usage.TotalTokens);
            Out.WriteLine("[{0}] Performance: {1:F2} tok/s", sessionId, usage.TokensPerSecond);
        }
        public virtual void OnToolCall(string sessionId, string toolName, double elapsedMs)
        { Out.WriteLine("[{0}] Tool '{1}' ran in {2:F2}ms", sessionId, toolName, elapsedMs); }
        public virtual void OnKvCacheBudgetExceeded(string sessionId, long currentBytes, long maxBytes)
        { Out.WriteLine("[{0}] KV cache budget exceeded: {1} of {2} bytes", sessionId, currentBytes, maxBytes); }
        public virtual void OnKvCacheEviction(string evictedSessionId, string reason, long freedBytes)
        { Out.WriteLine("[{0}] KV cache evicted ({1}): {2} bytes freed", evictedSessionId, reason, freedBytes); }
    }
}
