/**
 * Bytes that must outlive a request: mirrored result videos. Two drivers behind one small interface: a
 * directory (default, `DATA_DIR/blobs`) and S3-compatible object storage. Writes are atomic (temp file +
 * rename, or one PUT), reads stream, and a byte range can be read without the rest.
 */
import type { Readable } from 'node:stream'

export interface BlobInfo { size: number, contentType: string }

export interface BlobStore {
  /** Stores `body` under `key` whole or not at all; `size`, when given, must match what arrives. */
  put: (key: string, body: Readable, opts: { contentType: string, size?: number }) => Promise<BlobInfo>
  stat: (key: string) => Promise<BlobInfo | null>
  /** Streams bytes `start..end` (inclusive) or all of them. */
  read: (key: string, range?: { start: number, end: number }) => Promise<Readable>
  delete: (key: string) => Promise<void>
  /**
   * An id every store reaching the same bytes shares (a directory's identity file), so replicas can tell whether
   * they serve from one place; null when the driver cannot tell (S3: one bucket is shared by construction).
   */
  identity: () => Promise<string | null>
  close: () => Promise<void>
}

export class BlobSizeMismatch extends Error {
  constructor (expected: number, got: number) {
    super(`expected ${expected} bytes, got ${got}`)
    this.name = 'BlobSizeMismatch'
  }
}
