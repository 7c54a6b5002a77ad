import { createReadStream, createWriteStream } from 'node:fs'
import { mkdir, rename, rm, stat, readFile, writeFile } from 'node:fs/promises'
import { dirname, join, resolve, sep } from 'node:path'
import { randomBytes } from 'node:crypto'
import { pipeline } from 'node:stream/promises'
import { Transform, type Readable } from 'node:stream'
import { BlobSizeMismatch, type BlobInfo, type BlobStore } from './index.ts'

/** Blobs as files under one directory; a `.type` file beside each holds its content type. */
export class DirectoryBlobStore implements BlobStore {
  readonly root: string

  constructor (root: string) {
    this.root = resolve(root)
  }

  private path (key: string): string {
    const p = resolve(join(this.root, key))
    if (!p.startsWith(this.root + sep)) throw new Error('blob key escapes the store')
    return p
  }

  async put (key: string, body: Readable, opts: { contentType: string, size?: number }): Promise<BlobInfo> {
    const final = this.path(key)
    await mkdir(dirname(final), { recursive: true })
    const temp = `${final}.${randomBytes(6).toString('hex')}.tmp`
    let size = 0
    const count = new Transform({ transform (chunk: Buffer, _enc, done) { size += chunk.length; done(null, chunk) } })
    try {
      await pipeline(body, count, createWriteStream(temp, { flags: 'wx' }))
      if (opts.size !== undefined && size !== opts.size) throw new BlobSizeMismatch(opts.size, size)
      await writeFile(`${final}.type`, opts.contentType)
      await rename(temp, final)
    } catch (err) {
      await rm(temp, { force: true })
      throw err
    }
    return { size, contentType: opts.contentType }
  }

  async stat (key: string): Promise<BlobInfo | null> {
    const p = this.path(key)
    try {
      const s = await stat(p)
      const contentType = await readFile(`${p}.type`, 'utf8').catch(() => 'application/octet-stream')
      return { size: s.size, contentType }
    } catch {
      return null
    }
  }

  async read (key: string, range?: { start: number, end: number }): Promise<Readable> {
    return createReadStream(this.path(key), range)
  }

  async delete (key: string): Promise<void> {
    const p = this.path(key)
    await rm(p, { force: true })
    await rm(`${p}.type`, { force: true })
  }

  async close (): Promise<void> {}
}
