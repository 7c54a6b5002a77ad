/**
 * Per-caller limits kept on each replica (docs/API.md, "Per-caller limits"): how many large create bodies and SSE
 * streams each caller holds here right now. They are counts of things that live in this process (a socket being
 * read, a stream being written), so they are kept in memory, not in Redis: they die with the process, as the
 * things they count do, and cost no round trip on the request path.
 */

/** A slot taken; `release` gives it back and is safe to call more than once (every way out calls it). */
export interface Slot { release: () => void }

/** Which cap refused a slot: the caller's own share, or the replica's total (`globalMax`). */
export type Refusal = 'caller' | 'global'

export class CallerSlots {
  private readonly held = new Map<string, number>()
  private total = 0

  /** `globalMax` caps every caller together (`0` = no cap of its own). */
  constructor (private readonly globalMax = 0) {}

  /**
   * One slot for `caller` if it holds fewer than `callerMax` (`0` = no limit) and the replica fewer than its cap.
   * The caller's own limit is checked first: a caller over its share is told so (429) even when the replica is full.
   */
  take (caller: string, callerMax: number): Slot | Refusal {
    const mine = this.held.get(caller) ?? 0
    if (callerMax > 0 && mine >= callerMax) return 'caller'
    if (this.globalMax > 0 && this.total >= this.globalMax) return 'global'
    this.held.set(caller, mine + 1)
    this.total++
    let released = false
    return {
      release: () => {
        if (released) return
        released = true
        this.total--
        const left = (this.held.get(caller) ?? 1) - 1
        // Callers come and go: an idle caller keeps no entry, so the map is bounded by the slots held.
        if (left > 0) this.held.set(caller, left)
        else this.held.delete(caller)
      }
    }
  }

  /** Slots `caller` holds now. */
  heldBy (caller: string): number { return this.held.get(caller) ?? 0 }

  /** Slots held by every caller together. */
  get size (): number { return this.total }
}
