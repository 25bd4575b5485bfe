import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // Native addons and large typed arrays: isolate each file in its own process.
    pool: 'forks',
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
