import { createReadStream, createWriteStream } from 'node:fs'
import { mkdir, rename, rm, stat, readFile, writeFile } from 'node:fs/promises'
import { dirname, join, resolve, sep } from 'node:path'
import { randomBytes, randomUUID } from 'node:crypto'
import { pipeline } from 'node:stream/promises'
import { Transform, type Readable } from 'node:stream'
import { BlobSizeMismatch, type BlobInfo, type BlobStore } from './index.ts'

/** The file at the directory's root that names it: every replica mounting this directory reads the same id. */
export const DIR_ID_FILE = '.kling-gateway-dir'

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

  /**
   * The directory's id, made on first use. Created with O_EXCL, so of two replicas starting at once on one shared
   * volume exactly one writes it and the other reads that one; the reader retries briefly because the winner's
   * create and write are two steps.
   */
  async identity (): Promise<string> {
    const file = join(this.root, DIR_ID_FILE)
    await mkdir(this.root, { recursive: true })
    try {
      await writeFile(file, `${randomUUID()}\n`, { flag: 'wx' })
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    }
    for (let i = 0; i < 50; i++) {
      const id = (await readFile(file, 'utf8')).trim()
      if (/^[0-9a-f-]{36}$/.test(id)) return id
      await new Promise(resolve => setTimeout(resolve, 20))
    }
    throw new Error(`${file} holds no directory id (a UUID); if no replica is using this BLOB_DIR, delete the file`)
  }

  async close (): Promise<void> {}
}
