// A real Mosquitto broker for the fleet tests: on 127.0.0.1 at a free port, with persistence in its own
// directory (so a restart keeps retained messages and queued QoS 1 messages), stopped with SIGTERM (the
// broker writes its persistence file on the way out).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { userInfo } from 'node:os';
import path from 'node:path';

export const MOSQUITTO = process.env.SSOCL_MOSQUITTO ?? '/usr/sbin/mosquitto';

export function haveMosquitto(): boolean {
  return spawnSync(MOSQUITTO, ['-h'], { stdio: 'ignore' }).error === undefined;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

async function accepting(port: number, ms: number): Promise<void> {
  const until = Date.now() + ms;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.connect(port, '127.0.0.1');
      c.once('connect', () => {
        c.destroy();
        resolve(true);
      });
      c.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`mosquitto did not listen on ${port} within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export class Broker {
  private child: ChildProcess | null = null;
  log = '';

  private constructor(
    readonly port: number,
    readonly dir: string,
  ) {}

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  static async start(dir: string): Promise<Broker> {
    if (!haveMosquitto()) throw new Error(`${MOSQUITTO} not found: install Debian's mosquitto (.ci/run does) or set SSOCL_MOSQUITTO`);
    mkdirSync(dir, { recursive: true });
    const b = new Broker(await freePort(), dir);
    await b.up();
    return b;
  }

  async up(): Promise<void> {
    const conf = path.join(this.dir, 'mosquitto.conf');
    writeFileSync(
      conf,
      // user: run as root, mosquitto would drop to user 'mosquitto' and could not write its persistence file here.
      [`listener ${this.port} 127.0.0.1`, `user ${userInfo().username}`, 'allow_anonymous true', 'persistence true', `persistence_location ${this.dir}/`, 'message_size_limit 0', 'max_queued_messages 1000', ''].join('\n'),
    );
    const c = spawn(MOSQUITTO, ['-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
    c.stdout!.on('data', (d) => (this.log += d));
    c.stderr!.on('data', (d) => (this.log += d));
    this.child = c;
    await accepting(this.port, 5000);
  }

  /** SIGTERM, and wait for the exit (persistence written). */
  async down(): Promise<void> {
    const c = this.child;
    if (!c) return;
    this.child = null;
    if (c.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      c.once('exit', () => resolve());
      c.kill('SIGTERM');
    });
  }

  async restart(): Promise<void> {
    await this.down();
    await this.up();
  }
}
