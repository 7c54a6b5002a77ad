import type { Config } from '../config/index.ts'
import { DirectoryBlobStore } from './dir.ts'
import type { BlobStore } from './index.ts'
import { S3BlobStore } from './s3.ts'

/** The blob store the configuration asks for. */
export function createBlobStore (config: Config['blobs']): BlobStore {
  return config.driver === 's3' ? new S3BlobStore(config) : new DirectoryBlobStore(config.dir)
}
