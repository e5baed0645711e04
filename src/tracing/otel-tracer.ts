import type { IncomingHttpHeaders } from 'node:http'
import {
  type Attributes,
  type Context,
  DiagLogLevel,
  defaultTextMapGetter,
  defaultTextMapSetter,
  diag,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  type Tracer,
  trace,
} from '@opentelemetry/api'
import { W3CTraceContextPropagator } from '@opentelemetry/core'
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http'
import { defaultResource, detectResources, envDetector, resourceFromAttributes } from '@opentelemetry/resources'
import { BasicTracerProvider, BatchSpanProcessor } from '@opentelemetry/sdk-trace-base'
import {
  ATTR_ERROR_TYPE,
  ATTR_HTTP_REQUEST_METHOD,
  ATTR_HTTP_RESPONSE_STATUS_CODE,
  ATTR_HTTP_ROUTE,
  ATTR_SERVICE_NAME,
  ATTR_SERVICE_VERSION,
} from '@opentelemetry/semantic-conventions'
import type { HeaderMap } from '../http-headers.js'
import type { ChunkTap } from '../streaming/sse.js'
import type { AttemptEnd, AttemptSpan, RequestSpan, RequestTracer } from './request-tracer.js'

/**
 * The OpenTelemetry side of request-tracer.ts, loaded only when tracing is on (main.ts imports it
 * dynamically). Configured by the standard variables, which the SDK and the exporter read
 * themselves: `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`, `…_HEADERS`, `…_TIMEOUT`, `…_COMPRESSION`,
 * `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_BSP_*`.
 * Spans leave in batches over OTLP/HTTP (JSON); the provider is not registered globally, and the
 * propagation is W3C trace context, in and out. No key and no message content becomes an attribute.
 */

export interface OtelTracerOptions {
  readonly serviceVersion: string
  /** Where the SDK's own warnings go (an export that failed); silent without. */
  readonly log?: { warn(details: object, message: string): void }
  /** Upper bound on the last export at shutdown, so a dead collector cannot hold the exit. @default 5000 */
  readonly shutdownTimeoutMs?: number
}

const PROVIDER = 'toprouter'
const propagator = new W3CTraceContextPropagator()

export function openOtelTracer(options: OtelTracerOptions): RequestTracer {
  if (options.log !== undefined) {
    const log = options.log
    const warn = (message: string, ...args: unknown[]) => log.warn({ details: args.map(String) }, `OpenTelemetry: ${message}`)
    diag.setLogger({ error: warn, warn, info: () => {}, debug: () => {}, verbose: () => {} }, DiagLogLevel.WARN)
  }
  const resource = defaultResource()
    .merge(resourceFromAttributes({ [ATTR_SERVICE_NAME]: 'toprouter-proxy', [ATTR_SERVICE_VERSION]: options.serviceVersion }))
    .merge(detectResources({ detectors: [envDetector] }))
  const provider = new BasicTracerProvider({ resource, spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter())] })
  const tracer = provider.getTracer('toprouter-proxy', options.serviceVersion)
  const shutdownTimeoutMs = options.shutdownTimeoutMs ?? 5000

  return {
    enabled: true,
    startRequest(method, route, incoming, model, elapsedMs) {
      return new OtelRequestSpan(tracer, method, route, incoming, model, elapsedMs)
    },
    async shutdown() {
      let timer: NodeJS.Timeout | undefined
      const late = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, shutdownTimeoutMs)
        timer.unref()
      })
      try {
        await Promise.race([provider.shutdown(), late])
      } finally {
        clearTimeout(timer)
      }
    },
  }
}

class OtelRequestSpan implements RequestSpan {
  readonly recording: boolean
  private readonly span: Span
  private readonly context: Context
  private readonly tracer: Tracer
  private readonly chat: boolean
  private readonly operation: string
  private hop = 0
  private from: string | undefined
  private attempts = 0

  constructor(tracer: Tracer, method: string, route: string, incoming: IncomingHttpHeaders, model: string | undefined, elapsedMs: number) {
    this.tracer = tracer
    this.chat = route.endsWith('/chat/completions')
    this.operation = `${method} ${route}`
    const parent = propagator.extract(ROOT_CONTEXT, incoming, defaultTextMapGetter)
    const attributes: Attributes = { [ATTR_HTTP_REQUEST_METHOD]: method, [ATTR_HTTP_ROUTE]: route }
    if (this.chat) {
      attributes['gen_ai.operation.name'] = 'chat'
      attributes['gen_ai.provider.name'] = PROVIDER
      attributes['gen_ai.system'] = PROVIDER
      if (model !== undefined) attributes['gen_ai.request.model'] = model
    }
    this.span = tracer.startSpan(this.operation, { kind: SpanKind.SERVER, attributes, startTime: Date.now() - elapsedMs }, parent)
    this.recording = this.span.isRecording()
    this.context = trace.setSpan(parent, this.span)
  }

  attempt(model: string, attemptForModel: number): AttemptSpan {
    this.attempts += 1
    const attributes: Attributes = {
      'toprouter.attempt': this.attempts,
      'toprouter.attempt_for_model': attemptForModel,
      'toprouter.fallback.hop': this.hop,
    }
    if (this.from !== undefined) attributes['toprouter.fallback.from'] = this.from
    if (this.chat) {
      attributes['gen_ai.operation.name'] = 'chat'
      attributes['gen_ai.provider.name'] = PROVIDER
      attributes['gen_ai.system'] = PROVIDER
      attributes['gen_ai.request.model'] = model
    }
    const name = this.chat ? `chat ${model}` : this.operation
    return new OtelAttemptSpan(this.tracer.startSpan(name, { kind: SpanKind.CLIENT, attributes }, this.context))
  }

  fallback(from: string, to: string): void {
    this.hop += 1
    this.from = from
    this.span.addEvent('fallback', { 'toprouter.fallback.from': from, 'toprouter.fallback.to': to, 'toprouter.fallback.hop': this.hop })
  }

  served(model: string, body: Buffer | undefined, firstChunks: readonly Buffer[] | undefined): void {
    this.span.setAttribute('toprouter.served_by', model)
    if (!this.chat || !this.recording) return
    const answer =
      body !== undefined ? parseJson(body.toString('utf8')) : firstChunks !== undefined ? firstEventData(firstChunks) : undefined
    if (answer === undefined) return
    const attributes: Attributes = {}
    if (typeof answer.model === 'string') attributes['gen_ai.response.model'] = answer.model
    if (typeof answer.id === 'string') attributes['gen_ai.response.id'] = answer.id
    const usage = answer.usage as Record<string, unknown> | null | undefined
    if (typeof usage?.prompt_tokens === 'number') attributes['gen_ai.usage.input_tokens'] = usage.prompt_tokens
    if (typeof usage?.completion_tokens === 'number') attributes['gen_ai.usage.output_tokens'] = usage.completion_tokens
    if (Array.isArray(answer.choices)) {
      const reasons = answer.choices
        .map((choice: unknown) => (choice as { finish_reason?: unknown } | null)?.finish_reason)
        .filter((reason): reason is string => typeof reason === 'string')
      if (reasons.length > 0) attributes['gen_ai.response.finish_reasons'] = reasons
    }
    this.span.setAttributes(attributes)
  }

  streamTap(inner: ChunkTap | undefined): ChunkTap | undefined {
    return this.chat && this.recording ? new UsageWatch(this.span, inner) : inner
  }

  end(status: number, attempts: number, clientGone: boolean): void {
    this.span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, status)
    // As x-proxy-attempts counts them: an attempt an open breaker refused was not sent.
    this.span.setAttribute('toprouter.attempts', attempts)
    if (clientGone) this.span.setAttribute('toprouter.client_gone', true)
    if (status >= 500) {
      this.span.setAttribute(ATTR_ERROR_TYPE, String(status))
      this.span.setStatus({ code: SpanStatusCode.ERROR })
    }
    this.span.end()
  }
}

class OtelAttemptSpan implements AttemptSpan {
  readonly recording: boolean
  private readonly span: Span

  constructor(span: Span) {
    this.span = span
    this.recording = span.isRecording()
  }

  inject(headers: HeaderMap): void {
    propagator.inject(trace.setSpan(ROOT_CONTEXT, this.span), headers, defaultTextMapSetter)
  }

  end(details: AttemptEnd): void {
    const attributes: Attributes = {}
    if (details.upstreamStatus !== undefined) attributes[ATTR_HTTP_RESPONSE_STATUS_CODE] = details.upstreamStatus
    if (details.breakerState !== undefined) attributes['toprouter.breaker.state'] = details.breakerState
    if (details.pushbackMs !== undefined) attributes['toprouter.pushback_ms'] = Math.round(details.pushbackMs)
    if (details.retryReason !== undefined) attributes['toprouter.retry.reason'] = details.retryReason
    if (details.retryDelayMs !== undefined) attributes['toprouter.retry.delay_ms'] = Math.round(details.retryDelayMs)
    if (details.retryDelaySource !== undefined) attributes['toprouter.retry.delay_source'] = details.retryDelaySource
    if (details.notRetried !== undefined) attributes['toprouter.retry.stopped'] = details.notRetried
    if (details.failure !== undefined) {
      attributes[ATTR_ERROR_TYPE] = details.failure
      this.span.setStatus({ code: SpanStatusCode.ERROR, message: details.failure })
    }
    this.span.setAttributes(attributes)
    this.span.end()
  }
}

const USAGE_KEY = Buffer.from('"usage"')
const EVENT_END = Buffer.from('\n\n')
/** An event longer than this is not a usage chunk: the watch lets go of it. */
const MAX_HELD_BYTES = 64 * 1024
const EMPTY = Buffer.alloc(0)

/**
 * Sees a stream's bytes as the upstream sent them (before team mode's tap removes the usage chunk
 * it asked for) and sets `gen_ai.usage.*` from a usage chunk; passes every chunk on unchanged.
 */
class UsageWatch implements ChunkTap {
  private held: Buffer = EMPTY

  constructor(
    private readonly span: Span,
    private readonly inner: ChunkTap | undefined,
  ) {}

  push(chunk: Buffer): Buffer {
    this.watch(chunk)
    return this.inner === undefined ? chunk : this.inner.push(chunk)
  }

  flush(): Buffer {
    return this.inner === undefined ? EMPTY : this.inner.flush()
  }

  private watch(chunk: Buffer): void {
    const bytes = this.held.length === 0 ? chunk : Buffer.concat([this.held, chunk])
    const end = bytes.lastIndexOf(EVENT_END)
    const complete = end === -1 ? EMPTY : bytes.subarray(0, end)
    const rest = end === -1 ? bytes : bytes.subarray(end + EVENT_END.length)
    this.held = rest.length > MAX_HELD_BYTES ? EMPTY : Buffer.from(rest)
    if (complete.indexOf(USAGE_KEY) === -1) return
    for (const line of complete.toString('utf8').split('\n')) {
      if (!line.startsWith('data:') || !line.includes('"usage"')) continue
      const usage = parseJson(line.slice(5).trim())?.usage as Record<string, unknown> | null | undefined
      if (typeof usage?.prompt_tokens === 'number') this.span.setAttribute('gen_ai.usage.input_tokens', usage.prompt_tokens)
      if (typeof usage?.completion_tokens === 'number') this.span.setAttribute('gen_ai.usage.output_tokens', usage.completion_tokens)
    }
  }
}

type JsonObject = Record<string, unknown>

function parseJson(text: string): JsonObject | undefined {
  try {
    const value: unknown = JSON.parse(text)
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as JsonObject) : undefined
  } catch {
    return undefined
  }
}

/** The JSON of a stream's first `data:` event (its model and id); usage comes at the end, if at all. */
function firstEventData(chunks: readonly Buffer[]): JsonObject | undefined {
  const text = Buffer.concat(chunks).toString('utf8')
  for (const line of text.split('\n')) {
    if (!line.startsWith('data:')) continue
    const data = line.slice(5).trim()
    return data === '[DONE]' ? undefined : parseJson(data)
  }
  return undefined
}
