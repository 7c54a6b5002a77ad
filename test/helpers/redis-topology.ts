/**
 * Redis topologies on loopback for fault tests: a standalone server, a Sentinel set (1 master, 2 replicas, 3
 * sentinels) and a Redis Cluster (3 masters, 3 replicas). Ports come from the kernel, data lives in a directory
 * the caller gives (or a temp one), and every node has a config file on disk, so a node killed -9 restarts on the
 * same port, data and role (Sentinel and Cluster rewrite those files when they reconfigure a node).
 * Timeouts are small so that failovers finish in a few seconds. Each topology has a stop() that ends every process
 * it started; all of them are registered with bench/lib/proc.ts as well, for stopAll() on any way out.
 */
import { execFile } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { Redis } from 'ioredis'
import { spawnGroup, waitFor, type GroupProcess } from './group-process.ts'

const HOST = '127.0.0.1'
const run = promisify(execFile)

/** `n` distinct free loopback ports: all held open at once, so the kernel cannot hand out one twice. */
export async function freePorts (n: number): Promise<number[]> {
  const servers: Server[] = []
  try {
    for (let i = 0; i < n; i++) {
      const server = createServer()
      servers.push(server)
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject)
        server.listen(0, HOST, () => resolve())
      })
    }
    return servers.map(s => (s.address() as { port: number }).port)
  } finally {
    await Promise.all(servers.map(s => new Promise<void>(resolve => s.close(() => resolve()))))
  }
}

/**
 * One command on a short-lived connection: no offline queue surprises, no reconnects, nothing left open.
 * Rejects on refusal, timeout or a Redis error (LOADING included).
 */
export async function redisCommand (port: number, args: Array<string | number>, timeoutMs = 2000): Promise<unknown> {
  const client = new Redis({
    host: HOST,
    port,
    lazyConnect: true,
    connectTimeout: timeoutMs,
    commandTimeout: timeoutMs,
    maxRetriesPerRequest: 0,
    enableReadyCheck: false,
    retryStrategy: () => null
  })
  client.on('error', () => {})
  try {
    await client.connect()
    return await client.call(String(args[0]), ...args.slice(1).map(String))
  } finally {
    client.disconnect()
  }
}

/** `INFO <section>` as key → value. */
export async function redisInfo (port: number, section: string): Promise<Record<string, string>> {
  const text = String(await redisCommand(port, ['INFO', section]))
  const out: Record<string, string> = {}
  for (const line of text.split('\r\n')) {
    const i = line.indexOf(':')
    if (i > 0 && !line.startsWith('#')) out[line.slice(0, i)] = line.slice(i + 1)
  }
  return out
}

export type Fsync = 'always' | 'everysec' | 'no'

export interface NodeOptions {
  /** Append-only file on (default) or off. */
  aof?: boolean
  appendfsync?: Fsync
  /** `enable-debug-command yes` (DEBUG SLEEP, DEBUG SET-ACTIVE-EXPIRE, …). Default on: these are test servers. */
  debug?: boolean
  /** More config lines, e.g. `replicaof 127.0.0.1 6379`. */
  extra?: string[]
}

/** A redis-server (or redis-sentinel) with a fixed port, data dir and config file; restartable. */
export class RedisNode {
  readonly host = HOST
  proc?: GroupProcess
  private starts = 0

  constructor (
    readonly name: string,
    readonly port: number,
    readonly dir: string,
    readonly logDir: string,
    readonly sentinel = false
  ) {}

  get confPath (): string { return join(this.dir, this.sentinel ? 'sentinel.conf' : 'redis.conf') }
  get addr (): string { return `${HOST}:${this.port}` }
  get url (): string { return `redis://${HOST}:${this.port}` }
  get pid (): number | undefined { return this.proc?.pid }
  get logPath (): string { return join(this.logDir, `${this.name}.log`) }
  /** Where the append-only files live (Redis 7 multi-part AOF: a manifest, a base and incr files). */
  get aofDir (): string { return join(this.dir, 'appendonlydir') }

  alive (): boolean { return this.proc?.alive() ?? false }

  writeConfig (lines: string[]): void {
    mkdirSync(this.dir, { recursive: true })
    writeFileSync(this.confPath, lines.join('\n') + '\n')
  }

  /** Starts the process on its config file and waits until it answers PING (not LOADING). */
  async start (timeoutMs = 15_000): Promise<void> {
    if (this.alive()) throw new Error(`${this.name} is already running (pid ${this.pid})`)
    this.starts++
    const args = this.sentinel ? [this.confPath, '--sentinel'] : [this.confPath]
    this.proc = spawnGroup(`redis ${this.name} :${this.port}`, 'redis-server', args, {
      logPath: this.logPath,
      cwd: this.dir
    })
    const proc = this.proc
    await waitFor(`${this.name} on :${this.port} answering PING`, async () => {
      if (!proc.alive()) throw new Error(`${this.name} exited during start; see ${this.logPath}`)
      return await redisCommand(this.port, ['PING'], 500) === 'PONG' ? true : undefined
    }, timeoutMs, 50)
  }

  /** kill -9 of the process group; resolves once it is gone. */
  async kill9 (): Promise<void> {
    const proc = this.proc
    if (proc === undefined || !proc.alive()) return
    proc.signal('SIGKILL')
    await proc.exited
  }

  /** Freezes (SIGSTOP) or thaws (SIGCONT) it: a hung server with its sockets still open. */
  pause (): void { this.proc?.signal('SIGSTOP') }
  resume (): void { this.proc?.signal('SIGCONT') }

  /** SIGTERM (Redis flushes the AOF and exits), SIGKILL after `graceMs`. */
  async stop (graceMs = 5000): Promise<void> {
    this.proc?.signal('SIGCONT')
    await this.proc?.stop(graceMs)
  }

  /** Starts again on the same port, dir and config file. */
  async restart (timeoutMs?: number): Promise<void> {
    if (this.alive()) await this.kill9()
    await this.start(timeoutMs)
  }

  async command (...args: Array<string | number>): Promise<unknown> {
    return await redisCommand(this.port, args)
  }

  async role (): Promise<string> {
    return (await redisInfo(this.port, 'replication')).role
  }

  /** Copies the AOF directory as it is on disk now (to simulate what a crash would leave). */
  copyAof (dest: string): void {
    rmSync(dest, { recursive: true, force: true })
    if (existsSync(this.aofDir)) cpSync(this.aofDir, dest, { recursive: true })
  }

  /** Replaces the AOF directory by an earlier copy; only while the node is down. */
  restoreAof (from: string): void {
    if (this.alive()) throw new Error(`${this.name}: restore the AOF only while it is down`)
    rmSync(this.aofDir, { recursive: true, force: true })
    if (existsSync(from)) cpSync(from, this.aofDir, { recursive: true })
  }
}

function serverConfig (port: number, dir: string, o: NodeOptions): string[] {
  return [
    `port ${port}`,
    `bind ${HOST}`,
    'protected-mode no',
    'daemonize no',
    `dir ${dir}`,
    `pidfile ${join(dir, 'redis.pid')}`,
    'logfile ""',
    // No RDB snapshots: what survives is exactly what the AOF (or nothing) keeps.
    'save ""',
    `appendonly ${o.aof === false ? 'no' : 'yes'}`,
    `appendfsync ${o.appendfsync ?? 'everysec'}`,
    // No background rewrite, so a copy of the AOF directory taken at any moment is a consistent one.
    'auto-aof-rewrite-percentage 0',
    'aof-load-truncated yes',
    `enable-debug-command ${o.debug === false ? 'no' : 'yes'}`,
    // Replicas sync at once instead of waiting 5 s for more replicas to join a diskless transfer.
    'repl-diskless-sync-delay 0',
    // A master stopped with SIGTERM waits this long for its replicas (10 s by default): teardown need not wait.
    'shutdown-timeout 1',
    ...(o.extra ?? [])
  ]
}

function baseDir (dir: string | undefined, name: string): { path: string, owned: boolean } {
  if (dir !== undefined) { mkdirSync(dir, { recursive: true }); return { path: dir, owned: false } }
  return { path: mkdtempSync(join(tmpdir(), `kg-redis-${name}-`)), owned: true }
}

export interface Standalone {
  node: RedisNode
  url: string
  /** Stops the server and removes the data dir when this module made it. */
  stop: () => Promise<void>
}

/** One redis-server; `dir` fixed (or a temp dir), so it can be killed -9 and restarted on the same data and port. */
export async function startStandalone (
  opts: NodeOptions & { dir?: string, logDir?: string, port?: number } = {}
): Promise<Standalone> {
  const base = baseDir(opts.dir, 'standalone')
  const port = opts.port ?? (await freePorts(1))[0]
  const node = new RedisNode('redis', port, join(base.path, 'redis'), opts.logDir ?? base.path)
  node.writeConfig(serverConfig(port, node.dir, opts))
  try {
    await node.start()
  } catch (err) {
    await node.stop(2000)
    if (base.owned) rmSync(base.path, { recursive: true, force: true })
    throw err
  }
  return {
    node,
    url: node.url,
    stop: async () => {
      await node.stop(2000)
      if (base.owned) rmSync(base.path, { recursive: true, force: true })
    }
  }
}

export interface SentinelSet {
  masterName: string
  /** The data nodes; `nodes[0]` was the first master. */
  nodes: RedisNode[]
  sentinels: RedisNode[]
  /** `host:port,…` of the sentinels (REDIS_SENTINELS). */
  sentinelAddrs: string
  /** The node the sentinels currently name as master (asks each live sentinel; the first answer wins). */
  master: () => Promise<RedisNode>
  /** `SENTINEL FAILOVER` (a planned failover, no agreement needed); retried while one is already in progress. */
  failover: () => Promise<void>
  /** Waits until every live sentinel names a master other than `old` and that node says it is a master. */
  waitNewMaster: (old: RedisNode, timeoutMs?: number) => Promise<RedisNode>
  /** Waits until the master has `n` replicas with their link up. */
  waitReplicas: (n: number, timeoutMs?: number) => Promise<void>
  stop: () => Promise<void>
}

/** 1 master + 2 replicas + 3 sentinels (quorum 2, down-after 1 s, failover-timeout 5 s), AOF everysec. */
export async function startSentinelSet (opts: NodeOptions & {
  dir?: string
  logDir?: string
  masterName?: string
  downAfterMs?: number
  failoverTimeoutMs?: number
} = {}): Promise<SentinelSet> {
  const base = baseDir(opts.dir, 'sentinel')
  const logDir = opts.logDir ?? base.path
  const masterName = opts.masterName ?? 'kgmaster'
  const ports = await freePorts(6)
  const nodes = ports.slice(0, 3).map((p, i) => new RedisNode(`node${i}`, p, join(base.path, `node${i}`), logDir))
  const sentinels = ports.slice(3)
    .map((p, i) => new RedisNode(`sentinel${i}`, p, join(base.path, `sentinel${i}`), logDir, true))
  const all = [...nodes, ...sentinels]
  const stop = async () => {
    await Promise.all(all.map(async n => await n.stop(2000)))
    if (base.owned) rmSync(base.path, { recursive: true, force: true })
  }
  const byPort = (port: number) => {
    const node = nodes.find(n => n.port === port)
    if (node === undefined) throw new Error(`sentinels name an unknown master :${port}`)
    return node
  }
  const askMaster = async (s: RedisNode): Promise<number> => {
    const [, port] = await s.command('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', masterName) as [string, string]
    return Number(port)
  }
  const master = async (): Promise<RedisNode> => {
    for (const s of sentinels.filter(x => x.alive())) {
      try { return byPort(await askMaster(s)) } catch {}
    }
    throw new Error('no sentinel answered')
  }
  const waitReplicas = async (n: number, timeoutMs = 20_000) => {
    await waitFor(`${n} replicas linked to the master`, async () => {
      const m = await master()
      const info = await redisInfo(m.port, 'replication')
      const up = Object.entries(info).filter(([k, v]) => /^slave\d+$/.test(k) && v.includes('state=online')).length
      return info.role === 'master' && up >= n ? true : undefined
    }, timeoutMs, 200)
  }
  try {
    nodes.forEach((n, i) => n.writeConfig(serverConfig(n.port, n.dir, {
      ...opts,
      extra: [...(opts.extra ?? []), ...(i === 0 ? [] : [`replicaof ${HOST} ${nodes[0].port}`])]
    })))
    await Promise.all(nodes.map(async n => await n.start()))
    await waitFor('both replicas in sync', async () => {
      const info = await redisInfo(nodes[0].port, 'replication')
      const online = Object.values(info).filter(v => v.includes('state=online')).length
      return Number(info.connected_slaves) >= 2 && online >= 2 ? true : undefined
    }, 20_000, 100)
    for (const s of sentinels) {
      s.writeConfig([
        `port ${s.port}`,
        `bind ${HOST}`,
        'protected-mode no',
        'daemonize no',
        `dir ${s.dir}`,
        'logfile ""',
        `sentinel monitor ${masterName} ${HOST} ${nodes[0].port} 2`,
        `sentinel down-after-milliseconds ${masterName} ${opts.downAfterMs ?? 1000}`,
        `sentinel failover-timeout ${masterName} ${opts.failoverTimeoutMs ?? 5000}`,
        `sentinel parallel-syncs ${masterName} 2`
      ])
    }
    await Promise.all(sentinels.map(async s => await s.start()))
    // Ready when every sentinel knows both replicas and the two other sentinels (an unplanned failover needs both).
    await waitFor('sentinels know the replicas and each other', async () => {
      for (const s of sentinels) {
        const flat = await s.command('SENTINEL', 'MASTER', masterName) as string[]
        const m: Record<string, string> = {}
        for (let i = 0; i + 1 < flat.length; i += 2) m[flat[i]] = flat[i + 1]
        const known = Number(m['num-slaves']) >= 2 && Number(m['num-other-sentinels']) >= 2
        if (!known || m.flags !== 'master') return undefined
      }
      return true
    }, 30_000, 200)
  } catch (err) {
    await stop()
    throw err
  }
  return {
    masterName,
    nodes,
    sentinels,
    sentinelAddrs: sentinels.map(s => s.addr).join(','),
    master,
    failover: async () => {
      const s = sentinels.find(x => x.alive())
      if (s === undefined) throw new Error('no sentinel is running')
      await waitFor('SENTINEL FAILOVER accepted', async () => {
        try {
          return await s.command('SENTINEL', 'FAILOVER', masterName) === 'OK' ? true : undefined
        } catch (err) {
          if (/INPROG|NOGOODSLAVE/.test((err as Error).message)) return undefined
          throw err
        }
      }, 15_000, 250)
    },
    waitNewMaster: async (old: RedisNode, timeoutMs = 30_000) => await waitFor('a new master', async () => {
      const live = sentinels.filter(x => x.alive())
      const named = await Promise.all(live.map(async s => await askMaster(s)))
      if (named.some(p => p === old.port || p !== named[0])) return undefined
      const node = byPort(named[0])
      return await node.role() === 'master' ? node : undefined
    }, timeoutMs, 100),
    waitReplicas,
    stop
  }
}

export interface ClusterSet {
  /** Every node; which are masters changes with failovers. */
  nodes: RedisNode[]
  /** `host:port,…` of every node (REDIS_CLUSTER_NODES). */
  seeds: string
  /** The hash slot of a key (`{kg}:…` keys all share the slot of `kg`). */
  slotOf: (key: string) => Promise<number>
  /** The master serving the slot of `key`, as a live node reports it. */
  masterFor: (key: string) => Promise<RedisNode>
  /** Waits until a live node reports a master other than `old` for `key`'s slot and the cluster state is ok. */
  waitNewMaster: (key: string, old: RedisNode, timeoutMs?: number) => Promise<RedisNode>
  /** Waits until every live node reports cluster_state:ok. */
  waitOk: (timeoutMs?: number) => Promise<void>
  stop: () => Promise<void>
}

/** 3 masters + 3 replicas via `redis-cli --cluster create … --cluster-replicas 1` (node timeout 1 s). */
export async function startCluster (
  opts: NodeOptions & { dir?: string, logDir?: string, nodeTimeoutMs?: number } = {}
): Promise<ClusterSet> {
  const base = baseDir(opts.dir, 'cluster')
  const logDir = opts.logDir ?? base.path
  // Two ports per node: the bus port is set explicitly, as port + 10000 may not exist for a kernel-chosen port.
  const ports = await freePorts(12)
  const nodes = Array.from({ length: 6 }, (_, i) =>
    new RedisNode(`node${i}`, ports[i], join(base.path, `node${i}`), logDir))
  const stop = async () => {
    await Promise.all(nodes.map(async n => await n.stop(2000)))
    if (base.owned) rmSync(base.path, { recursive: true, force: true })
  }
  const live = () => nodes.filter(n => n.alive())
  type SlotRange = [number, number, [string, number, string]]
  const slotsOf = async (): Promise<SlotRange[]> => {
    let last: unknown
    for (const n of live()) {
      try { return await n.command('CLUSTER', 'SLOTS') as SlotRange[] } catch (err) { last = err }
    }
    throw new Error(`no live node answered CLUSTER SLOTS: ${String(last)}`)
  }
  const slotOf = async (key: string) => Number(await live()[0].command('CLUSTER', 'KEYSLOT', key))
  const masterFor = async (key: string): Promise<RedisNode> => {
    const slot = await slotOf(key)
    const range = (await slotsOf()).find(([from, to]) => slot >= from && slot <= to)
    const node = nodes.find(n => n.port === Number(range?.[2][1]))
    if (node === undefined) throw new Error(`no master serves slot ${slot}`)
    return node
  }
  const waitOk = async (timeoutMs = 30_000) => {
    await waitFor('cluster_state:ok on every live node', async () => {
      for (const n of live()) {
        const info = String(await n.command('CLUSTER', 'INFO'))
        if (!info.includes('cluster_state:ok')) return undefined
      }
      return true
    }, timeoutMs, 200)
  }
  try {
    nodes.forEach((n, i) => n.writeConfig(serverConfig(n.port, n.dir, {
      ...opts,
      extra: [
        ...(opts.extra ?? []),
        'cluster-enabled yes',
        'cluster-config-file nodes.conf',
        `cluster-port ${ports[6 + i]}`,
        `cluster-node-timeout ${opts.nodeTimeoutMs ?? 1000}`,
        // A replica may always take over, however long it was cut off: failover is what these tests are about.
        'cluster-replica-validity-factor 0'
      ]
    })))
    await Promise.all(nodes.map(async n => await n.start()))
    const create = ['--cluster', 'create', ...nodes.map(n => n.addr), '--cluster-replicas', '1', '--cluster-yes']
    await run('redis-cli', create, { timeout: 60_000 })
    await waitOk()
    await waitFor('every master has an online replica', async () => {
      const slots = await slotsOf()
      return slots.length >= 3 && slots.every(s => s.length >= 4) ? true : undefined
    }, 30_000, 200)
  } catch (err) {
    await stop()
    throw err
  }
  return {
    nodes,
    seeds: nodes.map(n => n.addr).join(','),
    slotOf,
    masterFor,
    waitNewMaster: async (key: string, old: RedisNode, timeoutMs = 30_000) => {
      const node = await waitFor(`a new master for ${key}`, async () => {
        const m = await masterFor(key)
        return m !== old && m.alive() && await m.role() === 'master' ? m : undefined
      }, timeoutMs, 100)
      await waitOk(timeoutMs)
      return node
    },
    waitOk,
    stop
  }
}
