/* mpi_hello: every rank says who it is and where it runs, then the ranks add up their numbers
 * together, so a run shows both that they found each other and that they can talk.
 *
 *   mpicc -o mpi_hello mpi_hello.c
 *   cmrun -n 2 -p 2 --wait --label ./mpi_hello
 */
#include <mpi.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    int rank, size, name_len, sum;
    char node[MPI_MAX_PROCESSOR_NAME];

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(node, &name_len);
    printf("rank %d of %d on %s\n", rank, size, node);

    /* 0 + 1 + ... + (size - 1), computed by all ranks together. */
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("sum of ranks %d (expected %d)\n", sum, size * (size - 1) / 2);

    MPI_Finalize();
    return sum == size * (size - 1) / 2 ? 0 : 1;
}
