import { devices } from '../devices.js';
import { addonPath, native } from '../native.js';

export const usage = `usage: lowbit devices [--json]

Lists the CPU (SIMD level, threads) and the CUDA devices lowbit sees, and the native addon it loaded
(the file, its build system, source hash, SIMD levels and CUDA architectures). LOWBIT_ADDON picks
another addon file.`;

export async function run(argv: string[]): Promise<number> {
  const list = devices();
  const build = native().buildInfo();
  const addon = { path: addonPath(), ...build };
  if (argv.includes('--json')) {
    console.log(JSON.stringify({ devices: list, addon }, null, 2));
    return 0;
  }
  for (const d of list) {
    if (d.kind === 'cpu') console.log(`cpu      ${d.threads} threads, ${d.simd}`);
    else
      console.log(
        `cuda:${d.index}   ${d.name} (sm_${d.computeCapability.replace('.', '')}, ${(d.totalMemory / 2 ** 30).toFixed(1)} GiB)`,
      );
  }
  const cuda = list.filter((d) => d.kind === 'cuda');
  if (cuda.length === 0) console.log(`(no CUDA devices: ${native().cudaDevices().reason})`);
  const archs = !build.cuda
    ? 'none (built without CUDA)'
    : build.cudaArchs
      ? build.cudaArchs
      : 'compiled in (architectures not recorded by this build)';
  console.log(`addon    ${addon.path}`);
  console.log(
    `         ${build.buildSystem} build of sources ${build.sourceHash}; SIMD: ${build.simd} detected, ${build.activeSimd} in use; CUDA: ${archs}`,
  );
  return 0;
}
