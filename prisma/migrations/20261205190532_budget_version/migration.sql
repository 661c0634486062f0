-- AlterTable
ALTER TABLE "accounts" ADD COLUMN     "budget_version" BIGINT NOT NULL DEFAULT 0;
