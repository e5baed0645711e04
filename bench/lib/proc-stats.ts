import { execFileSync } from 'node:child_process'
import { readdirSync, readFileSync, readlinkSync } from 'node:fs'

/** `getconf CLK_TCK`, the unit of /proc/<pid>/stat's CPU times; 100 if it cannot be read. */
export function clockTicksPerSecond(): number {
  try {
    const value = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim())
    return Number.isFinite(value) && value > 0 ? value : 100
  } catch {
    return 100
  }
}

/** utime + stime of a process (all its threads), in seconds. Fields 14 and 15 of /proc/<pid>/stat. */
export function cpuSeconds(pid: number, ticksPerSecond: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  // The command name (field 2) may contain spaces; everything after its closing ')' is fixed.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // fields[0] is field 3 (state), so field 14 is fields[11] and field 15 is fields[12].
  return (Number(fields[11]) + Number(fields[12])) / ticksPerSecond
}

export function statusKb(pid: number, key: 'VmHWM' | 'VmRSS'): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const match = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)
  return match?.[1] === undefined ? Number.NaN : Number(match[1])
}

/** Open file descriptors of the process that are sockets (listening sockets included). */
export function socketCount(pid: number): number {
  let count = 0
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('socket:')) count += 1
    } catch {
      // closed between readdir and readlink
    }
  }
  return count
}
