import { devices } from '../devices.js';
import { native } from '../native.js';

export const usage = 'usage: lowbit devices [--json]\n\nLists the CPU (SIMD level, threads) and the CUDA devices lowbit sees.';

export async function run(argv: string[]): Promise<number> {
  const list = devices();
  if (argv.includes('--json')) {
    console.log(JSON.stringify(list, null, 2));
    return 0;
  }
  for (const d of list) {
    if (d.kind === 'cpu') console.log(`cpu      ${d.threads} threads, ${d.simd}`);
    else console.log(`cuda:${d.index}   ${d.name} (sm_${d.computeCapability.replace('.', '')}, ${(d.totalMemory / 2 ** 30).toFixed(1)} GiB)`);
  }
  const cuda = list.filter((d) => d.kind === 'cuda');
  if (cuda.length === 0) console.log(`(no CUDA devices: ${cudaReason()})`);
  return 0;
}

function cudaReason(): string {
  return native().cudaDevices().reason;
}
