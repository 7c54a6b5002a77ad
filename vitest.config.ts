import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/helpers/global-setup.ts'],
    pool: 'forks',
    // Two files at a time on this 2-core machine (vitest's default here is one): every file has its own key prefix,
    // ports and processes, so they do not meet; the suite's wall time roughly halves.
    maxWorkers: 2,
    testTimeout: 30_000,
    hookTimeout: 30_000,
    teardownTimeout: 15_000
  }
})
