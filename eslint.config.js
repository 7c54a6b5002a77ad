import neostandard from 'neostandard'

export default [
  ...neostandard({
    ts: true,
    // client/schema.d.ts is generated (npm run client).
    ignores: ['dist/**', 'node_modules/**', 'openapi/**', 'client/schema.d.ts', '.data/**', 'coverage/**']
  }),
  {
    files: ['**/*.ts'],
    rules: {
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports' }]
    }
  },
  {
    // Readable lines: at most 120 characters, in code and in comments alike.
    files: ['**/*.ts', '**/*.js'],
    rules: { '@stylistic/max-len': ['error', { code: 120, tabWidth: 2, ignoreUrls: true }] }
  }
]
