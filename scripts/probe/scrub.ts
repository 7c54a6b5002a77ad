/**
 * What keeps secrets out of the probe's report and logs. Everything the probe prints passes through `scrub` with
 * the secrets of the run (the CometAPI key, the callback token); bodies are cut before they are shown, so a Base64
 * image echoed back, or a long signed URL, never floods an issue.
 */

/** Query parameters that grant access on their own (signed result URLs, tokens): their values are never shown. */
const SECRET_PARAMS = new RegExp(`^(${[
  'signature', 'sig', 'sign', 'x-oss-signature', 'x-amz-signature', 'x-amz-credential', 'x-amz-security-token',
  'x-goog-signature', 'x-goog-credential', 'ossaccesskeyid', 'accesskeyid', 'security-token', 'x-oss-security-token',
  'x-oss-credential', 'token', 'auth_key', 'key', 'policy', 'key-pair-id'
].join('|')})$`, 'i')
const EXPIRY_PARAMS = /^(x-oss-expires|expires|x-amz-expires|x-goog-expires|se|x-oss-date|x-amz-date|x-goog-date)$/i

export class Scrubber {
  readonly #secrets: string[] = []

  /** Adds a string that must never be printed (ignored when too short to be a secret worth hiding). */
  add (secret: string | undefined): void {
    if (secret !== undefined && secret.length >= 6 && !this.#secrets.includes(secret)) {
      this.#secrets.push(secret)
      // Longest first, so a secret containing another is hidden whole.
      this.#secrets.sort((a, b) => b.length - a.length)
    }
  }

  /** The text with every known secret, bearer value and key-looking string replaced. */
  scrub (text: string): string {
    let out = text
    for (const secret of this.#secrets) {
      out = out.split(secret).join('[redacted]')
      // A secret may come back URL-encoded (inside a query string) or JSON-escaped.
      const encoded = encodeURIComponent(secret)
      if (encoded !== secret) out = out.split(encoded).join('[redacted]')
    }
    return out
      .replace(/\b(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}/gi, '$1[redacted]')
      // CometAPI's keys (and new-api's) are `sk-` and a long token; one echoed back in part is still a key.
      .replace(/\bsk-[A-Za-z0-9_-]{12,}/g, 'sk-[redacted]')
      .replace(/([?&]token=)[A-Za-z0-9._~%-]{8,}/gi, '$1[redacted]')
  }
}

/** `s` cut to `max` characters, saying how much was left out. */
export function cut (s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max)}…[+${s.length - max} chars]`
}

/**
 * A body as it can be shown: every JSON string literal over 160 characters cut (Base64 images, signed URLs), the
 * rest kept as sent, so an unquoted 19-digit id still shows unquoted; then the whole cut at `max`.
 */
export function showBody (text: string, max = 3000): string {
  const short = text.replace(/"((?:[^"\\]|\\.){160,})"/g, (_m, inner: string) => `"${cut(inner, 80)}"`)
  return cut(short, max)
}

/** A URL as it can be shown: signature and token values hidden, the expiry parameters kept, a long path cut. */
export function showUrl (raw: string): string {
  let url: URL
  try { url = new URL(raw) } catch { return cut(raw.replace(/\?.*$/, '?[query hidden]'), 200) }
  const params = [...url.searchParams.entries()].map(([k, v]) =>
    SECRET_PARAMS.test(k) ? `${k}=[redacted]` : EXPIRY_PARAMS.test(k) ? `${k}=${v}` : `${k}=${cut(v, 40)}`)
  const query = params.length > 0 ? `?${params.join('&')}` : ''
  return `${url.protocol}//${url.host}${cut(url.pathname, 120)}${query}`
}

/** The values of a URL's signature and token parameters: secrets wherever the URL turns up. */
export function secretParamValues (raw: string): string[] {
  try {
    return [...new URL(raw).searchParams].filter(([k]) => SECRET_PARAMS.test(k)).map(([, v]) => v)
  } catch {
    return []
  }
}

/** The query parameters of a URL that say when it expires (OSS, S3, GCS, CloudFront, Azure). */
export function expiryParams (raw: string): Record<string, string> {
  const out: Record<string, string> = {}
  try {
    for (const [k, v] of new URL(raw).searchParams) if (EXPIRY_PARAMS.test(k)) out[k] = v
  } catch {}
  return out
}
