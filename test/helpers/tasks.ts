import { expect } from 'vitest'
import type { Harness } from './harness.ts'
import { auth } from './harness.ts'
import { callbackKeys, callbackToken } from '../../src/domain/callback-token.ts'
import type { TaskView } from '../../src/domain/task.ts'

/** A valid create body with two URL images; tests override single fields. */
export function validBody (over: Record<string, unknown> = {}): Record<string, unknown> {
  return { image_list: [{ image: 'https://img.example.com/a.png' }, { image: 'https://img.example.com/b.png' }], prompt: 'two friends wave', ...over }
}

export async function createTask (
  h: Harness,
  over: Record<string, unknown> = {},
  who: 'alice' | 'bob' = 'alice'
): Promise<TaskView> {
  const res = await h.app.inject({ method: 'POST', url: '/v1/videos', headers: auth(who), payload: validBody(over) })
  expect(res.statusCode, res.body).toBe(202)
  return res.json()
}

export async function getTask (h: Harness, id: string): Promise<TaskView> {
  return (await h.app.inject({ url: `/v1/videos/${id}`, headers: auth('ops') })).json()
}

/** Polls until `done(task)` holds, at most `ms`; returns the last task seen. */
export async function waitFor (h: Harness, id: string, done: (t: TaskView) => boolean, ms = 5000): Promise<TaskView> {
  let task = await getTask(h, id)
  for (let waited = 0; !done(task) && waited < ms; waited += 25) {
    await new Promise(resolve => setTimeout(resolve, 25))
    task = await getTask(h, id)
  }
  return task
}

/** The callback URL the gateway would give CometAPI for this task (its token good for a day). */
export function callbackPath (h: Harness, taskId: string): string {
  const token = callbackToken(callbackKeys(h.config), taskId, Date.now() + 24 * 3600_000)
  return `/callbacks/kling?token=${encodeURIComponent(token)}`
}
