// ESLint (flat config): the recommended JavaScript and typescript-eslint rules over src/, test/,
// bench/, scripts/ and examples/. Layout is Prettier's job (`npm run lint` checks both).
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    ignores: [
      'dist/',
      'build/',
      'build-*/',
      'node_modules/',
      'prebuilds/',
      'data/',
      '.device/',
      '.sysroot/',
      'coverage/',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { ...globals.node } },
    rules: {
      // `_name` marks a parameter or binding kept for its position or its side effect.
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' },
      ],
    },
  },
  {
    // Tests rethrow a fuzz case's error as a new message naming the seed, and mutate JSON freely.
    files: ['test/**'],
    rules: { 'preserve-caught-error': 'off', '@typescript-eslint/no-explicit-any': 'off' },
  },
  {
    // CommonJS children that tests spawn (they run outside the ESM package scope).
    files: ['**/*.cjs'],
    languageOptions: { sourceType: 'commonjs' },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
);
