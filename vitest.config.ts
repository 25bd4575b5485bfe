import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // Native addons and large typed arrays: isolate each file in its own process.
    pool: 'forks',
    include: ['test/**/*.test.ts'],
    // compiles dist/ when src/ is newer: the CLI tests run dist/cli/bin.js as a user would
    globalSetup: ['test/setup/dist.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
