import { createRequire } from 'node:module'
import { pino, type Logger, type DestinationStream } from 'pino'

// `sig`: a signed content/events link (src/services/links.ts) is a credential until it expires.
const SECRET_FIELDS = new Set(['token', 'key', 'api_key', 'secret', 'sig'])
const SECRET_INSIDE = /(?:^|[?&;\s])(?:token|key|api_key|secret|sig)\s*=/i

/**
 * Percent-decoded as the query parser decodes (`+` is a space), three times over for double encodings; a bad escape
 * is left as it is rather than thrown on.
 */
function decoded (text: string): string {
  let out = text.replace(/\+/g, ' ')
  for (let round = 0; round < 3; round++) {
    const next = out.replace(/%([0-9a-f]{2})/gi, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)))
    if (next === out) break
    out = next
  }
  return out
}

/**
 * Drops query fields that may carry secrets (the callback `token`) from a logged URL. Decided on the decoded query,
 * as the route reads it: `?%74oken=…` is the route's `token` too. A field whose decoded text assigns a secret
 * field (`?a=%26token%3D…`) goes whole.
 */
export function redactUrl (url: string): string {
  const start = url.indexOf('?')
  if (start < 0) return url
  const end = url.includes('#', start) ? url.indexOf('#', start) : url.length
  const fields = url.slice(start + 1, end).split('&').map(field => {
    const eq = field.indexOf('=')
    const name = eq < 0 ? field : field.slice(0, eq)
    if (SECRET_FIELDS.has(decoded(name).trim().toLowerCase())) return `${name}=[REDACTED]`
    return SECRET_INSIDE.test(decoded(field)) ? '[REDACTED]' : field
  })
  return `${url.slice(0, start + 1)}${fields.join('&')}${url.slice(end)}`
}

/**
 * pino-pretty is a devDependency: an image built with `--omit=dev` has none, and pino would throw at start on a TTY
 * (`docker run -it`). There the logs stay JSON.
 */
function prettyAvailable (): boolean {
  try {
    createRequire(import.meta.url).resolve('pino-pretty')
    return true
  } catch {
    return false
  }
}

/**
 * The one pino configuration: secrets redacted by path, URLs stripped of secret query fields by the request
 * serializer (pino's `redact` cannot reach inside a URL string), pretty output only on a TTY.
 */
export function createLogger (level: string, destination?: DestinationStream): Logger {
  const options = {
    level,
    redact: {
      paths: [
        'req.headers.authorization', 'req.headers.cookie', 'headers.authorization',
        '*.apiKey', '*.key', '*.secret', '*.token', 'config.links.secret',
        'config.upstream.key', 'config.callbackSecret', 'config.callbackSecretsPrevious', 'config.blobs.secretAccessKey'
      ],
      censor: '[REDACTED]'
    },
    serializers: {
      req: (req: { method: string, url: string, id: string, ip?: string }) => ({
        id: req.id, method: req.method, url: redactUrl(req.url), ip: req.ip
      }),
      res: (res: { statusCode: number }) => ({ statusCode: res.statusCode }),
      err: pino.stdSerializers.err
    }
  }
  if (destination !== undefined) return pino(options, destination)
  if (process.stdout.isTTY && prettyAvailable()) {
    return pino({
      ...options,
      transport: { target: 'pino-pretty', options: { translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' } }
    })
  }
  return pino(options)
}
