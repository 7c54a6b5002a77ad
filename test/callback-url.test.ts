/**
 * Callbacks need a public https URL (docs/API.md, "Configuration"): with a real upstream, start refuses a
 * PUBLIC_BASE_URL that is missing, not https, or a loopback, private or link-local host (by literal IP or an internal
 * name), naming the variable, unless CALLBACK_ALLOW_INSECURE=true; and the submit path never falls back to
 * http://127.0.0.1 for a real upstream. loadConfig itself, and the real process (`node src/server.ts`).
 */
import { describe, it, expect } from 'vitest'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { callbackBaseUrl, ConfigError, loadConfig } from '../src/config/index.ts'

const root = new URL('..', import.meta.url).pathname
const secret = { CALLBACK_SECRET: 'c'.repeat(32) }
const comet = { COMETAPI_KEY: 'sk-callback-url-test-0001', ...secret }
const kling = { KLING_ACCESS_KEY: 'ak-callback-url-0001', KLING_SECRET_KEY: 'sk-callback-url-secret-0001', ...secret }

function problemsOf (env: Record<string, string>): string[] {
  try {
    loadConfig(env)
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError)
    return (err as ConfigError).problems
  }
  throw new Error('expected a ConfigError')
}
const about = (env: Record<string, string>) => problemsOf(env).filter(p => p.startsWith('PUBLIC_BASE_URL:'))

describe('PUBLIC_BASE_URL with a real upstream', () => {
  it('is required with either real upstream, whatever CALLBACK_ALLOW_INSECURE says', () => {
    for (const env of [comet, kling, { ...comet, CALLBACK_ALLOW_INSECURE: 'true' }]) {
      const [problem, ...more] = about(env)
      expect(more).toEqual([])
      expect(problem).toMatch(/^PUBLIC_BASE_URL: required with UPSTREAM=(cometapi|kling)/)
    }
  })

  it.each([
    ['http', 'http://gateway.example.com', /must be https/],
    ['loopback', 'https://127.0.0.1:3000', /loopback, private, link-local or reserved/],
    ['IPv6 loopback', 'https://[::1]:3000', /loopback, private, link-local or reserved/],
    ['private 10/8', 'https://10.1.2.3', /loopback, private, link-local or reserved/],
    ['private 192.168/16', 'https://192.168.0.10/kg', /loopback, private, link-local or reserved/],
    ['link-local (cloud metadata)', 'https://169.254.169.254', /loopback, private, link-local or reserved/],
    ['localhost', 'https://localhost:3000', /internal name/],
    ['a *.internal name', 'https://gateway.svc.internal', /internal name/],
    ['a *.local name', 'https://gateway.local', /internal name/],
    ['credentials', 'https://user:pw@gateway.example.com', /credentials/]
  ])('refuses %s, naming the variable and the way out, never the value', (_name, url, detail) => {
    const [problem, ...more] = about({ ...comet, PUBLIC_BASE_URL: url })
    expect(more).toEqual([])
    expect(problem).toMatch(detail)
    expect(problem).not.toContain(url)
    if (!/credentials/.test(problem)) expect(problem).toContain('CALLBACK_ALLOW_INSECURE=true')
    // On-prem upstreams and tests may call back over http to a private address when they say so.
    if (!/credentials/.test(problem)) {
      expect(loadConfig({ ...comet, PUBLIC_BASE_URL: url, CALLBACK_ALLOW_INSECURE: 'true' }).publicBaseUrl)
        .toBe(url.replace(/\/+$/, ''))
    }
  })

  it('names it in the one ConfigError beside every other bad variable', () => {
    const env = { ...kling, PUBLIC_BASE_URL: 'http://10.0.0.1', PORT: 'eighty', UPSTREAM_CONCURRENCY: '0' }
    const problems = problemsOf(env)
    expect(problems.map(p => p.split(':')[0]).sort()).toEqual(['PORT', 'PUBLIC_BASE_URL', 'UPSTREAM_CONCURRENCY'])
  })

  it('takes a public https URL, with a port and a path, and the simulator needs none', () => {
    expect(loadConfig({ ...comet, PUBLIC_BASE_URL: 'https://gw.example.com:8443/kg/' }).publicBaseUrl)
      .toBe('https://gw.example.com:8443/kg')
    expect(loadConfig({ ...kling, PUBLIC_BASE_URL: 'https://203.0.114.7' }).callbackAllowInsecure).toBe(false)
    const simulated = [{}, { UPSTREAM: 'simulator', COMETAPI_KEY: 'sk-1' }, { PUBLIC_BASE_URL: 'http://127.0.0.1:1' }]
    for (const env of simulated) {
      expect(loadConfig(env).upstream.name).toBe('simulator')
    }
  })

  it('callback_url never falls back to loopback for a real upstream (only for the simulator)', () => {
    const real = loadConfig({ ...comet, PUBLIC_BASE_URL: 'https://gw.example.com' })
    expect(callbackBaseUrl(real)).toBe('https://gw.example.com')
    delete real.publicBaseUrl
    expect(() => callbackBaseUrl(real)).toThrow(/PUBLIC_BASE_URL/)
    expect(callbackBaseUrl({ ...loadConfig({}), port: 3456 })).toBe('http://127.0.0.1:3456')
  })

  it('the process refuses to start with an http one, naming PUBLIC_BASE_URL, and exits 1', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
      cwd: root,
      env: { PATH: process.env.PATH ?? '', ...comet, PUBLIC_BASE_URL: 'http://gateway:3000' },
      stdio: ['ignore', 'pipe', 'pipe']
    })
    let err = ''
    child.stderr.on('data', (c: Buffer) => { err += c.toString() })
    const [code] = await once(child, 'exit')
    expect(code).toBe(1)
    expect(err).toMatch(/PUBLIC_BASE_URL: must be https with UPSTREAM=cometapi/)
    expect(err).not.toContain(comet.COMETAPI_KEY)
  })
})
