// `npm run build [-- <outDir>]`: what the Dockerfile runs: the TypeScript compiled to `dist/` (or `outDir`), with the
// files the compiled code reads beside it (the Lua scripts, the simulator's sample video, the dashboard). Plain
// JavaScript so it runs before anything is built; the benchmarks build their gateway with it too.
import { execFileSync } from 'node:child_process'
import { cpSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const outDir = resolve(process.argv[2] ?? join(root, 'dist'))
const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc')
execFileSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.build.json'), '--outDir', outDir], { stdio: 'inherit' })
for (const dir of ['src/store/lua', 'simulator/assets', 'dashboard']) {
  cpSync(join(root, dir), join(outDir, dir), { recursive: true })
}
