/* mpi_pingpong: ranks 0 and 1 send a message back and forth, for the time one round trip takes
 * and the bandwidth of large messages. Put the two ranks on two nodes to see the network:
 *
 *   mpicc -o mpi_pingpong mpi_pingpong.c
 *   cmrun -n 2 -p 1 --wait ./mpi_pingpong
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size < 2) {
        if (rank == 0)
            fprintf(stderr, "mpi_pingpong needs 2 ranks (cmrun -n 2 -p 1)\n");
        MPI_Finalize();
        return 1;
    }
    static const int sizes[] = {1, 64, 4096, 262144, 4194304};
    char *buffer = calloc(1 << 22, 1);
    for (int s = 0; s < 5; s++) {
        int bytes = sizes[s];
        int rounds = bytes < 4096 ? 100 : 10;
        MPI_Barrier(MPI_COMM_WORLD);
        double start = MPI_Wtime();
        for (int i = 0; i < rounds; i++) {
            if (rank == 0) {
                MPI_Send(buffer, bytes, MPI_CHAR, 1, 0, MPI_COMM_WORLD);
                MPI_Recv(buffer, bytes, MPI_CHAR, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            } else if (rank == 1) {
                MPI_Recv(buffer, bytes, MPI_CHAR, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                MPI_Send(buffer, bytes, MPI_CHAR, 0, 0, MPI_COMM_WORLD);
            }
        }
        double round_trip = (MPI_Wtime() - start) / rounds;
        if (rank == 0)
            printf("%8d bytes: round trip %8.1f us, %8.1f MB/s\n", bytes, round_trip * 1e6,
                   2.0 * bytes / round_trip / 1e6);
    }
    free(buffer);
    MPI_Finalize();
    return 0;
}
