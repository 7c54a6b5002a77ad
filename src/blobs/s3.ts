import type { Config } from '../config/index.ts'
import {
  S3Client, PutObjectCommand, HeadObjectCommand, GetObjectCommand, DeleteObjectCommand, NotFound
} from '@aws-sdk/client-s3'
import type { Readable } from 'node:stream'
import { BlobSizeMismatch, type BlobInfo, type BlobStore } from './index.ts'

/** BLOB_DRIVER=s3's settings, as config/ parses them. */
export type S3Options = Omit<Extract<Config['blobs'], { driver: 's3' }>, 'driver'>

/** Blobs as objects in one bucket. A PUT is atomic: readers see the whole object or none. */
export class S3BlobStore implements BlobStore {
  private readonly client: S3Client

  constructor (private readonly opts: S3Options) {
    this.client = new S3Client({
      region: opts.region,
      endpoint: opts.endpoint,
      forcePathStyle: opts.forcePathStyle,
      ...(opts.accessKeyId !== undefined && opts.secretAccessKey !== undefined && {
        credentials: { accessKeyId: opts.accessKeyId, secretAccessKey: opts.secretAccessKey }
      })
    })
  }

  private key (key: string): string { return `${this.opts.prefix}${key}` }

  async put (key: string, body: Readable, opts: { contentType: string, size?: number }): Promise<BlobInfo> {
    // One PUT needs the length up front; a mirrored video is capped in size, so it is gathered first.
    const chunks: Buffer[] = []
    for await (const chunk of body) chunks.push(chunk as Buffer)
    const data = Buffer.concat(chunks)
    if (opts.size !== undefined && data.length !== opts.size) throw new BlobSizeMismatch(opts.size, data.length)
    await this.client.send(new PutObjectCommand({
      Bucket: this.opts.bucket,
      Key: this.key(key),
      Body: data,
      ContentType: opts.contentType,
      ContentLength: data.length
    }))
    return { size: data.length, contentType: opts.contentType }
  }

  async stat (key: string): Promise<BlobInfo | null> {
    try {
      const head = await this.client.send(new HeadObjectCommand({ Bucket: this.opts.bucket, Key: this.key(key) }))
      return { size: head.ContentLength ?? 0, contentType: head.ContentType ?? 'application/octet-stream' }
    } catch (err) {
      const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode
      if (err instanceof NotFound || status === 404) return null
      throw err
    }
  }

  async read (key: string, range?: { start: number, end: number }): Promise<Readable> {
    const res = await this.client.send(new GetObjectCommand({
      Bucket: this.opts.bucket,
      Key: this.key(key),
      Range: range === undefined ? undefined : `bytes=${range.start}-${range.end}`
    }))
    return res.Body as Readable
  }

  async delete (key: string): Promise<void> {
    await this.client.send(new DeleteObjectCommand({ Bucket: this.opts.bucket, Key: this.key(key) }))
  }

  async identity (): Promise<null> {
    return null
  }

  async close (): Promise<void> {
    this.client.destroy()
  }
}
