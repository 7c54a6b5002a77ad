/**
 * Writes openapi/openapi.json from the live route table (docs/DESIGN.md, "Rules of the house"). `--check` writes
 * nothing and exits 1 when the committed file differs from what the routes now produce.
 */
import { readFile, writeFile, mkdir } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { renderOpenApi } from '../test/helpers/openapi.ts'

const file = fileURLToPath(new URL('../openapi/openapi.json', import.meta.url))
const fresh = await renderOpenApi()
if (process.argv.includes('--check')) {
  const committed = await readFile(file, 'utf8').catch(() => '')
  if (committed !== fresh) {
    console.error('openapi/openapi.json is stale: run `npm run openapi` and commit it')
    process.exit(1)
  }
  console.log('openapi/openapi.json is up to date')
} else {
  await mkdir(fileURLToPath(new URL('../openapi/', import.meta.url)), { recursive: true })
  await writeFile(file, fresh)
  console.log(`wrote ${file}`)
}
