/**
 * `npm run dev-key` prints the development API key of DATA_DIR (made if there is none); `-- --rotate` replaces it.
 * A running gateway keeps the key it read at start until it is restarted.
 */
import { loadDevKey } from '../src/infra/dev-key.ts'
import { loadEnvFile } from '../src/infra/env-file.ts'

const args = process.argv.slice(2)
const unknown = args.filter(a => a !== '--rotate')
if (unknown.length > 0) {
  console.error(`unknown argument ${unknown.join(' ')}; usage: npm run dev-key [-- --rotate]`)
  process.exit(2)
}
loadEnvFile()
const dataDir = process.env.DATA_DIR === undefined || process.env.DATA_DIR === '' ? '.data' : process.env.DATA_DIR
const { key, path, created } = await loadDevKey(dataDir, { rotate: args.includes('--rotate') })
console.log(key)
console.error(created
  ? `a new development key (an operator key) is in ${path}; restart running gateways to use it`
  : `the development key (an operator key) of ${path}`)
