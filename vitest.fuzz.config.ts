import { defineConfig } from 'vitest/config'
import base from './vitest.config.ts'

/**
 * `npm run fuzz`: test/fuzz.test.ts alone at 2,000 requests per operation (issue 13, item 10); `npm test` runs
 * the same file at 60. FUZZ_RUNS in the environment wins over both. Spread, not mergeConfig: that would append
 * to the base's `include` and run the whole suite.
 */
export default defineConfig({
  ...base,
  test: {
    ...base.test,
    include: ['test/fuzz.test.ts'],
    env: { FUZZ_RUNS: process.env.FUZZ_RUNS ?? '2000' }
  }
})
