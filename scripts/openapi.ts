/**
 * Writes openapi/openapi.json from the live route table (docs/DESIGN.md, "Rules of the house"). `--check` writes
 * nothing and exits 1 when the committed file differs from what the routes now produce. `--file=<path>` names
 * another file (the test of `--check` itself uses it, so that it never touches the committed one).
 */
import { readFile, writeFile, mkdir } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { renderOpenApi } from '../test/helpers/openapi.ts'

const named = process.argv.find(a => a.startsWith('--file='))?.slice('--file='.length)
const file = named !== undefined ? resolve(named) : fileURLToPath(new URL('../openapi/openapi.json', import.meta.url))
const fresh = await renderOpenApi()
if (process.argv.includes('--check')) {
  const committed = await readFile(file, 'utf8').catch(() => '')
  if (committed !== fresh) {
    console.error('openapi/openapi.json is stale: run `npm run openapi` and commit it')
    process.exit(1)
  }
  console.log('openapi/openapi.json is up to date')
} else {
  await mkdir(dirname(file), { recursive: true })
  await writeFile(file, fresh)
  console.log(`wrote ${file}`)
}
