import { pino, type Logger, type DestinationStream } from 'pino'

/** Drops query strings that may carry secrets (the callback `token`) from a logged URL. */
export function redactUrl (url: string): string {
  return url.replace(/([?&](?:token|key|api_key|secret)=)[^&#]*/gi, '$1[REDACTED]')
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
        '*.apiKey', '*.key', '*.secret', '*.token',
        'config.upstream.key', 'config.callbackSecret', 'config.blobs.secretAccessKey'
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
  if (process.stdout.isTTY) {
    return pino({
      ...options,
      transport: { target: 'pino-pretty', options: { translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' } }
    })
  }
  return pino(options)
}
