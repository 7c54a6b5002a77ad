#!/usr/bin/env node
// The CLI is TypeScript (client/cli.ts); tsx, a dependency already, runs it as it is, so a clone needs no build.
import { register } from 'tsx/esm/api'

register()
const { main } = await import('../client/cli.ts')
process.exitCode = await main(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr, env: process.env })
