/**
 * A small SSE client over fetch, for tests: collects `{id, event, data}` frames until told to stop or the stream
 * ends.
 */
export interface SseFrame { id: string | undefined, event: string | undefined, data: string }

export async function readSse (
  url: string,
  headers: Record<string, string>,
  opts: { until?: (frames: SseFrame[]) => boolean, timeoutMs?: number } = {}
): Promise<{ frames: SseFrame[], ended: boolean, status: number }> {
  const controller = new AbortController()
  const timer = setTimeout(() => controller.abort(), opts.timeoutMs ?? 5000)
  const frames: SseFrame[] = []
  let ended = false
  let status = 0
  try {
    const res = await fetch(url, { headers, signal: controller.signal })
    status = res.status
    if (res.body === null || status !== 200) return { frames, ended, status }
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
    let buffer = ''
    for (;;) {
      const { value, done } = await reader.read()
      if (done) { ended = true; break }
      buffer += value
      let cut
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, cut)
        buffer = buffer.slice(cut + 2)
        const frame: SseFrame = { id: undefined, event: undefined, data: '' }
        let isEvent = false
        for (const line of block.split('\n')) {
          if (line.startsWith('id: ')) {
            frame.id = line.slice(4)
            isEvent = true
          } else if (line.startsWith('event: ')) frame.event = line.slice(7)
          else if (line.startsWith('data: ')) frame.data += line.slice(6)
        }
        if (isEvent) frames.push(frame)
      }
      if (opts.until?.(frames) === true) { controller.abort(); break }
    }
  } catch (err) {
    if ((err as Error).name !== 'AbortError') throw err
  } finally {
    clearTimeout(timer)
  }
  return { frames, ended, status }
}
