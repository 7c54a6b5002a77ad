import { defineConfig, mergeConfig } from 'vitest/config'
import base from './vitest.config.ts'

/**
 * `npm run fuzz`: test/fuzz.test.ts alone at 2,000 requests per operation (issue 13, item 10); `npm test` runs
 * the same file at 200. FUZZ_RUNS in the environment wins over both.
 */
export default mergeConfig(base, defineConfig({
  test: {
    include: ['test/fuzz.test.ts'],
    env: { FUZZ_RUNS: process.env.FUZZ_RUNS ?? '2000' }
  }
}))
