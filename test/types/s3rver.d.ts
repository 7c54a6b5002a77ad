/** The little of s3rver 3 the tests use: an S3-compatible server on loopback, backed by a directory. */
declare module 's3rver' {
  import type { AddressInfo } from 'node:net'

  interface S3rverOptions {
    port?: number
    address?: string
    silent?: boolean
    directory?: string
    resetOnClose?: boolean
    configureBuckets?: Array<{ name: string, configs?: Array<string | Buffer> }>
  }

  export default class S3rver {
    constructor (options?: S3rverOptions)
    run (): Promise<AddressInfo>
    close (): Promise<void>
  }
}
